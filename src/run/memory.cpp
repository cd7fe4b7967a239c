// The memory a training run will take, estimated before anything is allocated (msae/run.h), and the
// memory the process may take (MemAvailable and the cgroup v2 limit).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>

#include "msae/comm.h"
#include "msae/run.h"

namespace msae::run {
namespace {

constexpr double kFloat = 4, kInt32 = 4, kInt64 = 8, kDouble = 8;

// The sparse engine's step buffers (src/model/step_sparse.cpp; they only grow, so every one that a run can
// reach is counted at its largest): the (B, D) pre-activations, the (B, d) rows (x_cent, q and the G suffix
// sums S), the codes as CSR and CSC (with the CSC's (threads, D) counters), the selection scratch, and AuxK
// on both of its paths (the sparse products' packed decoder rows and chunked rows, the dense GEMMs' (B, n)
// and (n, d) blocks over at most aux_k / aux_dense_density dead latents).
double sparse_step_bytes(const train::TrainOptions& t, double d, double threads) {
  const SaeConfig& c = t.sae;
  const double B = static_cast<double>(t.batch), D = static_cast<double>(c.d_sae);
  const double G = static_cast<double>(c.num_groups());
  double k = static_cast<double>(c.k);
  if (!c.group_k.empty()) {
    k = 0;
    for (int64_t kg : c.group_k) k += static_cast<double>(kg);
  }
  const double nnz = std::min(k * B, B * D);
  double bytes = kFloat * (B * D + B * d * (2 + G) + nnz + D)                         // pre, x_cent, q, S, gz, sum_gz
                 + kFloat * threads * ((G + 1) * d + 16) + kDouble * 4 * threads * d  // row scratch, b_dec partials
                 + kInt64 * (B + 1) + (kInt32 + kFloat) * nnz                         // CSR codes
                 + kInt64 * (D + 1) + (kInt32 + kInt64) * nnz + kInt64 * threads * D  // CSC
                 + (kInt32 + kFloat) * 2 * nnz + kInt32 * threads * 65536 + kInt64 * B  // selection scratch
                 + (kInt64 + 2 * kInt32) * D;                                          // dead counters, dead list, slots
  if (c.aux_k > 0) {
    const double an = B * std::min(static_cast<double>(c.aux_k), D);  // AuxK entries, at most
    const double used = std::min(D, an);                               // latents they use
    bytes += (kInt32 + kFloat) * 3 * an + kFloat * an                  // codes, selection, CSC, grad a
             + kInt64 * (D + 1) + kInt64 * threads * D                 // their CSC
             + kInt32 * (D + an) + kFloat * used * d + kFloat * 2 * B * d;  // packed rows, chunked q and x_cent
    const double density = t.sparse_engine.aux_dense_min_density;
    const double dense_n = density > 0 ? std::min(D, static_cast<double>(c.aux_k) / density) : D;
    bytes += kFloat * (B * dense_n + 3 * dense_n * d + threads * dense_n);
  }
  return bytes;
}

// The reference engine (src/model/loss_ref.cpp) is dense: (B, D) pre-activations, activations, codes,
// their gradient, and with AuxK its dense codes and gradient; about a dozen (B, d) rows.
double reference_step_bytes(const train::TrainOptions& t, double d) {
  const SaeConfig& c = t.sae;
  const double B = static_cast<double>(t.batch), D = static_cast<double>(c.d_sae);
  const double G = static_cast<double>(c.num_groups());
  return kFloat * ((c.aux_k > 0 ? 6 : 4) * B * D + (G + 8) * B * d + 2 * D) + kInt64 * D;
}

double gib(double bytes) { return bytes / (1024.0 * 1024.0 * 1024.0); }

std::string fixed(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, v >= 100 ? "%.0f" : v >= 1 ? "%.1f" : "%.2f", v);
  return buf;
}

// A number from the start of a file ("max" and unreadable files give -1).
int64_t read_number(const std::string& path) {
  std::ifstream in(path);
  std::string word;
  if (!(in >> word) || word.empty() || word.find_first_not_of("0123456789") != std::string::npos) return -1;
  try {
    return std::stoll(word);
  } catch (const std::exception&) {
    return -1;
  }
}

}  // namespace

MemoryEstimate estimate_training_bytes(const train::TrainOptions& t, int64_t d_in, int processes) {
  const SaeConfig& c = t.sae;
  const double d = static_cast<double>(d_in), D = static_cast<double>(c.d_sae), B = static_cast<double>(t.batch);
  const double threads = std::max(1, num_threads());
  const double P = 2 * D * d + D + d;  // floats of W_enc^T, W_dec, b_enc, b_dec
  MemoryEstimate m;
  if (processes > 1) {  // the root's shard (groups are split evenly, so about D / processes latents)
    train::TrainOptions shard = t;
    shard.sae.d_sae = static_cast<int64_t>(std::ceil(D / processes)) + c.num_groups();
    const double Ds = static_cast<double>(shard.sae.d_sae);
    const double Ps = 2 * Ds * d + Ds + d;
    m.parameters = kFloat * Ps;
    m.optimizer = kFloat * 2 * Ps;
    m.gradients = kFloat * Ps;
    // its step, the BatchTopK candidates (k B from each process, extracted as values and ids) and the AuxK
    // candidates of every process (8 bytes each)
    m.step = sparse_step_bytes(shard, d, threads) + (kFloat + kInt32) * processes * static_cast<double>(c.k) * B +
             (c.aux_k > 0 ? 8.0 * processes * B * std::min(static_cast<double>(c.aux_k), D) : 0.0);
    m.data = kFloat * 3 * B * d;
    // the whole parameters and moments gathered for a checkpoint, then the copy written at the end
    m.output = kFloat * (3 * P + P + D * d);
    m.evaluation = kFloat * (1024 * D + 1024 * d + 2 * 4096 * d);
    return m;
  }
  m.parameters = kFloat * P;
  m.optimizer = kFloat * 2 * P;
  m.gradients = kFloat * P;
  m.step = t.engine == "reference" ? reference_step_bytes(t, d) : sparse_step_bytes(t, d, threads);
  m.step_kept = t.engine != "reference";
  m.data = kFloat * 3 * B * d;  // the batch the loop trains on and the reader thread's two
  // At the end: the parameters copied out of the engine and W_enc transposed for the file; the final
  // evaluation encodes 1024 rows at a time (src/model/loss_ref.cpp encode_inference: a (1024, D) buffer) out
  // of chunks of 4096 rows.
  m.output = kFloat * (P + D * d);
  m.evaluation = kFloat * (1024 * D + 1024 * d + 2 * 4096 * d);
  return m;
}

int64_t available_memory_bytes() {
  int64_t best = -1;
  auto take = [&](int64_t v) {
    if (v >= 0 && (best < 0 || v < best)) best = v;
  };
  {
    std::ifstream in("/proc/meminfo");
    std::string key;
    long long kb = 0;
    std::string unit;
    while (in >> key >> kb) {
      std::getline(in, unit);
      if (key == "MemAvailable:") {
        take(static_cast<int64_t>(kb) * 1024);
        break;
      }
    }
  }
  // cgroup v2: this process's group (from /proc/self/cgroup, "0::/path") and each group above it.
  std::string rel;
  {
    std::ifstream in("/proc/self/cgroup");
    std::string line;
    while (std::getline(in, line))
      if (line.rfind("0::", 0) == 0) rel = line.substr(3);
  }
  for (std::string dir = "/sys/fs/cgroup" + (rel == "/" ? std::string() : rel);;) {
    const int64_t max = read_number(dir + "/memory.max"), current = read_number(dir + "/memory.current");
    if (max >= 0 && current >= 0) take(std::max<int64_t>(0, max - current));
    if (dir == "/sys/fs/cgroup" || dir.size() <= std::string("/sys/fs/cgroup").size()) break;
    dir = dir.substr(0, dir.rfind('/'));
  }
  return best;
}

std::string check_training_memory(const train::TrainOptions& t, int64_t d, int64_t available, int processes) {
  const MemoryEstimate m = estimate_training_bytes(t, d, processes);
  if (processes > 1 && available >= 0) {  // this machine's processes share what is available
    const int here = std::max(1, comm::local_processes());
    available /= here;
  }
  if (available < 0 || m.total() <= static_cast<double>(available))
    return cat("memory: about ", fixed(gib(m.total())), " GiB estimated, ",
               available < 0 ? std::string("not compared with the available memory") : cat(fixed(gib(static_cast<double>(available))), " GiB available"));
  runtime_error("this run needs about ", fixed(gib(m.total())), " GiB of memory (parameters ", fixed(gib(m.parameters)),
                ", Adam moments ", fixed(gib(m.optimizer)), ", gradients ", fixed(gib(m.gradients)),
                ", the step's buffers for batch ", t.batch, " ", fixed(gib(m.step)), ", the final evaluation ",
                fixed(gib(m.evaluation)), ", the rest ", fixed(gib(m.data + m.output)), ") but only ", fixed(gib(static_cast<double>(available))),
                " GiB are available (MemAvailable, and the cgroup's memory.max less memory.current); lower ",
                opt("d_sae"), " (now ", t.sae.d_sae, ": the parameters and their Adam state grow with d_sae x d_in = ",
                t.sae.d_sae, " x ", d, ") or ", opt("batch"), " (now ", t.batch,
                ": the (batch, d_sae) pre-activations), or pass ", opt("no_memory_check"), " to run anyway");
}

}  // namespace msae::run
