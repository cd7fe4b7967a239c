// The data flags shared by msae train, eval and bench-data (docs/data.md): --data, --dtype (--bf16),
// --tensor, --d-in, --shuffle-buffer, --on-nonfinite, --no-reader-thread.
#pragma once

#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "msae/data.h"
#include "msae/io.h"

namespace msae::cli {

struct DataArgs {
  std::string data;
  std::string dtype;
  bool bf16 = false;  // alias of --dtype bf16
  std::string tensor;
  int64_t d_in = 0;
  int64_t shuffle_buffer = -1;
  std::string on_nonfinite = "error";
  bool no_reader_thread = false;

  // Registers the flags. `training`: also the ordering flags (--shuffle-buffer, --no-reader-thread).
  void add_to(CLI::App* app, bool training) {
    app->add_option("--data", data,
                    "Activations: a .npy / .safetensors / raw file, a directory of shards, or a glob ('dir/*.npy')");
    app->add_option("--dtype", dtype, "Element type: f32 | f16 | bf16 (raw files; bf16 reads a '<u2' .npy as bfloat16)");
    app->add_flag("--bf16", bf16, "Same as --dtype bf16");
    app->add_option("--tensor", tensor, "The .safetensors tensor to read (default: the file's only 2-D tensor)");
    app->add_option("--d-in", d_in, "Row width of raw files");
    app->add_option("--on-nonfinite", on_nonfinite, "Rows with NaN/Inf: error (stop, naming file and row) | skip (drop and count)")
        ->capture_default_str();
    if (training) {
      app->add_option("--shuffle-buffer", shuffle_buffer,
                      "Streaming shuffle buffer in rows; 0 = full permutation per epoch (default: permutation up to "
                      "4 GiB of data, else 262144)");
      app->add_flag("--no-reader-thread", no_reader_thread, "Read batches on the training thread (no prefetch)");
    }
  }

  data::DataOptions options(bool shuffle, uint64_t seed) const {
    data::DataOptions o;
    if (bf16 && !dtype.empty() && dtype != "bf16")
      usage_error("--bf16 and --dtype ", dtype, " contradict each other");
    o.dtype = bf16 ? "bf16" : dtype;
    o.tensor = tensor;
    o.d_in = d_in;
    o.shuffle = shuffle;
    o.shuffle_buffer = shuffle_buffer;
    o.seed = seed;
    o.on_nonfinite = data::parse_on_nonfinite(on_nonfinite);
    return o;
  }

  nlohmann::json to_json() const {
    return {{"data", data},           {"dtype", bf16 ? "bf16" : dtype}, {"tensor", tensor},
            {"d_in", d_in},           {"shuffle_buffer", shuffle_buffer}, {"on_nonfinite", on_nonfinite},
            {"no_reader_thread", no_reader_thread}};
  }
  void from_json(const nlohmann::json& j) {
    data = j.at("data").get<std::string>();
    dtype = j.at("dtype").get<std::string>();
    bf16 = false;
    tensor = j.at("tensor").get<std::string>();
    d_in = io::json_int(j.at("d_in"), "checkpoint run state \"d_in\"");
    shuffle_buffer = io::json_int(j.at("shuffle_buffer"), "checkpoint run state \"shuffle_buffer\"");
    on_nonfinite = j.at("on_nonfinite").get<std::string>();
    no_reader_thread = j.at("no_reader_thread").get<bool>();
  }
};

}  // namespace msae::cli
