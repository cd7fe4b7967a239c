// Checkpoints for exact resume (train.h, docs/formats.md) and the activation-normalization fold.
#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "msae/comm.h"
#include "msae/io.h"
#include "msae/train.h"

namespace msae::train {

using nlohmann::json;
namespace stdfs = std::filesystem;

namespace {

constexpr int kCheckpointFormat = 1;
constexpr const char* kDigestFile = "digest.json";  // sizes and CRC-32C of state.json and state.safetensors

std::string step_name(int64_t step) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "step-%010" PRId64, step);
  return buf;
}

uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

Tensor take(io::SafetensorsFile& f, const std::string& file, const std::string& name, const std::vector<int64_t>& shape) {
  auto it = f.tensors.find(name);
  if (it == f.tensors.end()) runtime_error(file, ": tensor '", name, "' is missing; the checkpoint is incomplete");
  if (it->second.shape != shape)
    runtime_error(file, ": tensor '", name, "' has shape ", shape_str(it->second.shape), ", expected ", shape_str(shape));
  if (f.stored_dtypes[name] != io::DType::f32)
    runtime_error(file, ": tensor '", name, "' is ", io::dtype_name(f.stored_dtypes[name]), ", expected float32");
  return std::move(it->second);
}

// The complete checkpoints of a run, newest first (temporary names are never complete).
std::vector<std::string> checkpoint_names(const std::string& run_dir) {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& e : stdfs::directory_iterator(run_dir + "/checkpoints", ec)) {
    const std::string n = e.path().filename().string();
    if (n.rfind("step-", 0) == 0 && n.find(".tmp") == std::string::npos && e.is_directory(ec)) names.push_back(n);
  }
  std::sort(names.rbegin(), names.rend());
  return names;
}

std::string join(const std::vector<std::string>& parts, const std::string& sep) {
  std::string out;
  for (const std::string& p : parts) out += (out.empty() ? "" : sep) + p;
  return out;
}

}  // namespace

std::string write_checkpoint(const std::string& run_dir, int64_t step, const Trainer& trainer, const json& extra,
                             int keep) {
  // The host views first: with a sharded engine they are gathers that every process makes (collective),
  // and only the root, which holds the whole state then, writes.
  const SaeParams& p = trainer.params();
  const AdamState& opt = trainer.optimizer();
  const std::vector<int64_t>& n_inactive = trainer.latent_state().n_inactive;
  if (!comm::is_root()) return {};

  const std::string root = run_dir + "/checkpoints";
  io::create_directories(root);
  const std::string name = step_name(step);
  const std::string final_dir = root + "/" + name;
  const std::string tmp = io::temp_name(final_dir);
  io::create_directories(tmp);

  const SaeGrads zeros = opt.m.W_dec.data.empty() ? SaeGrads::zeros(p.d, p.D) : SaeGrads{};
  const SaeGrads& m = opt.m.W_dec.data.empty() ? zeros : opt.m;
  const SaeGrads& v = opt.v.W_dec.data.empty() ? zeros : opt.v;
  const int64_t d = p.d, D = p.D;
  json digests = json::object();
  digests["state.safetensors"] = io::write_safetensors(tmp + "/state.safetensors",
                        {{"W_enc_t", {D, d}, p.W_enc_t.ptr()},
                         {"W_dec", {D, d}, p.W_dec.ptr()},
                         {"b_enc", {D}, p.b_enc.ptr()},
                         {"b_dec", {d}, p.b_dec.ptr()},
                         {"adam_m.W_enc_t", {D, d}, m.W_enc_t.ptr()},
                         {"adam_m.W_dec", {D, d}, m.W_dec.ptr()},
                         {"adam_m.b_enc", {D}, m.b_enc.ptr()},
                         {"adam_m.b_dec", {d}, m.b_dec.ptr()},
                         {"adam_v.W_enc_t", {D, d}, v.W_enc_t.ptr()},
                         {"adam_v.W_dec", {D, d}, v.W_dec.ptr()},
                         {"adam_v.b_enc", {D}, v.b_enc.ptr()},
                         {"adam_v.b_dec", {d}, v.b_dec.ptr()}},
                        {{"format", "msae-checkpoint"}}).to_json();
  const json state = {{"format", "msae-checkpoint"},
                      {"format_version", kCheckpointFormat},
                      {"msae_version", version_string()},
                      {"git_commit", git_commit()},
                      {"step", step},
                      {"d_in", d},
                      {"d_sae", D},
                      {"adam_t", opt.t},
                      {"threshold", p.threshold},
                      {"threshold_bits", float_bits(p.threshold)},
                      {"n_inactive", n_inactive},
                      {"extra", extra}};
  digests["state.json"] = io::write_text_file_atomic(tmp + "/state.json", state.dump() + "\n").to_json();
  // Written last: a checkpoint is verified against it when read (a flipped bit resumes nothing).
  io::write_text_file_atomic(tmp + "/" + kDigestFile, digests.dump(1) + "\n");

  // Publish with io::commit_directory: the directory takes its name in one rename, or, when a checkpoint
  // of this step is already there (a resumed run writes its step again), in one exchange with it; only
  // then is the old one removed. `latest` is replaced atomically after. At every instant each step-N name
  // is a complete checkpoint, and `latest` names one (read_checkpoint also finds them without it).
  io::commit_directory(tmp, final_dir, /*overwrite=*/true);
  io::write_text_file_atomic(root + "/latest", name + "\n");

  // Keep the newest `keep` complete checkpoints.
  const std::vector<std::string> names = checkpoint_names(run_dir);  // newest first
  for (size_t i = static_cast<size_t>(std::max(keep, 1)); i < names.size(); ++i)
    if (names[i] != name) io::remove_all(root + "/" + names[i]);
  return final_dir;
}

namespace {

Checkpoint read_one(const std::string& dir);

}  // namespace

bool has_checkpoint(const std::string& run_dir) {
  return io::path_exists(run_dir + "/checkpoints/latest") || !checkpoint_names(run_dir).empty();
}

Checkpoint read_checkpoint(const std::string& run_dir) {
  const std::string latest = run_dir + "/checkpoints/latest";
  std::vector<std::string> names = checkpoint_names(run_dir);
  if (names.empty() && !io::path_exists(latest))
    runtime_error(run_dir, ": no checkpoint (", latest, " is missing); --resume needs the --out directory of a run ",
                  "that wrote checkpoints (--checkpoint-every N, or one interrupted by SIGINT/SIGTERM)");
  // The newest complete checkpoint that verifies; `latest` names it unless a crash came between a
  // checkpoint's rename and the rewrite of `latest`, or the newest one is damaged.
  std::vector<std::string> failures;
  if (io::path_exists(latest)) {
    std::string name = io::read_text_file(latest);
    while (!name.empty() && (name.back() == '\n' || name.back() == '\r' || name.back() == ' ')) name.pop_back();
    if (name.rfind("step-", 0) != 0 || name.find('/') != std::string::npos || name.find("..") != std::string::npos)
      failures.push_back(cat(latest, ": expected a checkpoint name like step-0000000100, found '", name, "'"));
    else if (std::find(names.begin(), names.end(), name) == names.end())
      failures.push_back(cat(latest, " names ", name, ", which is missing"));
  }
  for (const std::string& name : names) {
    try {
      Checkpoint c = read_one(run_dir + "/checkpoints/" + name);
      if (!failures.empty())
        log_warn(cat("resuming from ", c.path, ", the newest usable checkpoint, because: ", join(failures, "; ")));
      return c;
    } catch (const Error& e) {
      failures.push_back(e.what());
    }
  }
  runtime_error(run_dir, ": no usable checkpoint: ", join(failures, "; "));
}

namespace {

Checkpoint read_one(const std::string& dir) {
  Checkpoint c;
  c.path = dir;
  const std::string digest_file = c.path + "/" + kDigestFile;
  if (io::path_exists(digest_file)) {  // checkpoints of msae before 0.3 have none
    const json digests = io::parse_json_file_text(io::read_text_file(digest_file), digest_file);
    for (const char* f : {"state.json", "state.safetensors"}) {
      if (!digests.is_object() || !digests.contains(f)) runtime_error(digest_file, ": no digest of ", f);
      io::verify_file(c.path + "/" + f, io::FileDigest::from_json(digests.at(f), cat(digest_file, ": ", f)), digest_file);
    }
  }
  const std::string state_file = c.path + "/state.json";
  const json state = io::parse_json_file_text(io::read_text_file(state_file), state_file);
  int64_t d = 0, D = 0;
  try {
    if (state.at("format").get<std::string>() != "msae-checkpoint")
      runtime_error(state_file, ": \"format\" is not \"msae-checkpoint\"");
    // Every number through io::json_* (type and range checked before converting: fuzz finding, a float
    // d_sae of 1e88 read with get<int64_t>() was undefined behaviour).
    auto key = [&](const char* k) { return cat(state_file, ": \"", k, "\""); };
    const int64_t version = io::json_int(state.at("format_version"), key("format_version"));
    if (version != kCheckpointFormat)
      runtime_error(state_file, ": format_version ", version, " is not supported (expected ", kCheckpointFormat, ")");
    c.step = io::json_int(state.at("step"), key("step"), 0);
    d = io::json_int(state.at("d_in"), key("d_in"), 1, int64_t{1} << 31);
    D = io::json_int(state.at("d_sae"), key("d_sae"), 1, int64_t{1} << 31);
    c.opt.t = io::json_int(state.at("adam_t"), key("adam_t"), 0);
    c.latents.n_inactive = io::json_int_vector(state.at("n_inactive"), key("n_inactive"), 0);
    c.extra = state.at("extra");
    const float threshold =
        bits_float(static_cast<uint32_t>(io::json_int(state.at("threshold_bits"), key("threshold_bits"), 0, UINT32_MAX)));
    if (c.step < 0 || c.opt.t < 0 || d <= 0 || D <= 0 || static_cast<int64_t>(c.latents.n_inactive.size()) != D)
      runtime_error(state_file, ": inconsistent step/shape fields (step ", c.step, ", d_in ", d, ", d_sae ", D,
                    ", ", c.latents.n_inactive.size(), " dead counters)");
    c.params.threshold = threshold;
  } catch (const json::exception& e) {
    runtime_error(state_file, ": malformed checkpoint state: ", e.what());
  }
  const std::string tensors_file = c.path + "/state.safetensors";
  io::SafetensorsFile f = io::read_safetensors(tensors_file);
  const float threshold = c.params.threshold;
  c.params = SaeParams::zeros(d, D);
  c.params.threshold = threshold;
  c.params.W_enc_t = take(f, tensors_file, "W_enc_t", {D, d});
  c.params.W_dec = take(f, tensors_file, "W_dec", {D, d});
  c.params.b_enc = take(f, tensors_file, "b_enc", {D});
  c.params.b_dec = take(f, tensors_file, "b_dec", {d});
  if (c.opt.t > 0) {
    for (auto [prefix, g] : {std::pair<const char*, SaeGrads*>{"adam_m.", &c.opt.m}, {"adam_v.", &c.opt.v}}) {
      g->W_enc_t = take(f, tensors_file, cat(prefix, "W_enc_t"), {D, d});
      g->W_dec = take(f, tensors_file, cat(prefix, "W_dec"), {D, d});
      g->b_enc = take(f, tensors_file, cat(prefix, "b_enc"), {D});
      g->b_dec = take(f, tensors_file, cat(prefix, "b_dec"), {d});
    }
  }
  return c;
}

}  // namespace

}  // namespace msae::train
