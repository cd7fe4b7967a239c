// The Python module `msae` (docs/python.md): load, run and train SAEs on numpy arrays.
//
// Inputs are never copied or converted: an activation matrix must be a C-contiguous float32 numpy array
// (N, d) and is read in place (a wrong dtype is a TypeError, a wrong shape or layout a ValueError, each
// with the conversion to use). The GIL is released while msae computes. msae::Error becomes ValueError
// (usage errors) or RuntimeError (runtime errors) with msae's message.
//
// Threads: every computation runs on msae's one process-wide thread pool. Computations hold a shared lock
// on it (any number may run at once; a second one runs serially on its own thread, see core.h), and
// changing the thread count takes the exclusive lock, because the pool cannot be resized while it runs.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cmath>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <numeric>
#include <optional>
#include <shared_mutex>
#include <string>
#include <utility>
#include <vector>

#include "msae/core.h"
#include "msae/data.h"
#include "msae/eval.h"
#include "msae/io.h"
#include "msae/kernels.h"
#include "msae/model.h"
#include "msae/sae_dir.h"
#include "msae/synth.h"
#include "msae/run.h"
#include "msae/train.h"

namespace py = pybind11;
using nlohmann::json;

namespace msae::python {
namespace {

// ---------------------------------------------------------------------------------------------
// The pool lock (see the top of the file). t_pool_depth makes nested use on one thread (an encode
// inside a progress callback) take the shared lock once.
// ---------------------------------------------------------------------------------------------
std::shared_mutex g_pool_lock;
thread_local int t_pool_depth = 0;

// Held while a computation uses the pool. Construct it with the GIL released: it may wait.
class PoolUse {
 public:
  PoolUse() {
    if (t_pool_depth++ == 0) g_pool_lock.lock_shared();
  }
  ~PoolUse() {
    if (--t_pool_depth == 0) g_pool_lock.unlock_shared();
  }
  PoolUse(const PoolUse&) = delete;
  PoolUse& operator=(const PoolUse&) = delete;
};

// Sets msae's thread count (n <= 0: all hardware threads). Called with the GIL held.
void set_threads(int n) {
  if (t_pool_depth > 0)
    throw py::value_error("msae's thread count cannot be changed inside a progress callback or other msae call");
  py::gil_scoped_release nogil;
  std::unique_lock<std::shared_mutex> lock(g_pool_lock);
  msae::set_num_threads(n);
}

// ---------------------------------------------------------------------------------------------
// Arguments.
// ---------------------------------------------------------------------------------------------
std::string type_name(py::handle obj) { return py::str(py::type::handle_of(obj).attr("__name__")).cast<std::string>(); }

std::string path_arg(py::handle obj, const char* what) {
  py::object os = py::module_::import("os");
  py::object path;
  try {
    path = os.attr("fspath")(obj);
  } catch (py::error_already_set&) {
    throw py::type_error(cat(what, ": expected a path (str or os.PathLike), got ", type_name(obj)));
  }
  if (!py::isinstance<py::str>(path)) throw py::type_error(cat(what, ": expected a str path, got ", type_name(path)));
  std::string s = path.cast<std::string>();
  if (s.empty()) throw py::value_error(cat(what, ": empty path"));
  return s;
}

// A (rows, cols) float32 matrix read in place from a numpy array; `keep` holds the array alive.
struct Rows {
  py::array keep;
  const float* data = nullptr;
  int64_t rows = 0, cols = 0;
};

// Checks that `obj` is a C-contiguous float32 numpy array (rows, cols) with cols == expected_cols
// (when >= 0) and returns it without copying. Raises TypeError (not an array, not float32) or ValueError
// (not 2-D, wrong width, not C-contiguous), naming `what` and the fix.
Rows float32_rows(py::handle obj, const std::string& what, int64_t expected_cols, const char* cols_name) {
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(cat(what, ": expected a numpy.ndarray of dtype float32 with shape (N, ", cols_name, "), got ",
                             type_name(obj), "; convert with numpy.ascontiguousarray(x, dtype=numpy.float32)"));
  py::array a = py::reinterpret_borrow<py::array>(obj);
  if (!py::array_t<float>::check_(a))
    throw py::type_error(cat(what, ": expected dtype float32, got ", py::str(a.dtype()).cast<std::string>(),
                             "; msae reads arrays in place and does not convert them: pass ",
                             "numpy.ascontiguousarray(x, dtype=numpy.float32)"));
  if (a.ndim() != 2) {
    std::vector<int64_t> shape(a.shape(), a.shape() + a.ndim());
    throw py::value_error(cat(what, ": expected a 2-D array (N, ", cols_name, "), got shape ", shape_str(shape),
                              a.ndim() == 1 ? "; for a single row use x.reshape(1, -1)" : ""));
  }
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(cat(what, ": the array is not C-contiguous (a transposed or sliced view?); msae reads ",
                              "arrays in place: pass numpy.ascontiguousarray(x)"));
  if (reinterpret_cast<uintptr_t>(a.data()) % alignof(float) != 0)
    throw py::value_error(cat(what, ": the array's data is not aligned to 4 bytes; pass numpy.ascontiguousarray(x)"));
  Rows r;
  r.rows = a.shape(0);
  r.cols = a.shape(1);
  if (expected_cols >= 0 && r.cols != expected_cols)
    throw py::value_error(cat(what, ": expected ", expected_cols, " columns (", cols_name, "), got shape (", r.rows,
                              ", ", r.cols, ")"));
  r.data = static_cast<const float*>(a.data());
  r.keep = std::move(a);
  return r;
}

// ---------------------------------------------------------------------------------------------
// Json <-> Python (through the json module: msae.json is small).
// ---------------------------------------------------------------------------------------------
py::object to_python(const json& j) { return py::module_::import("json").attr("loads")(j.dump()); }

// ---------------------------------------------------------------------------------------------
// The SAE object: immutable after construction, so any number of threads may use it.
// ---------------------------------------------------------------------------------------------
struct Sae {
  SaeConfig cfg;
  SaeParams params;
  json info;  // msae.json ({} for an SAE from another trainer)
  std::string format = "msae";       // saedir::SaeDirectory::format: msae, saelens-jumprelu, ..., sparsify-topk
  json source_cfg = json::object();  // cfg.json as read (Sae.save of an imported SAE carries its metadata)

  // The architecture: msae's training one, or the imported SAE's inference one (jumprelu, standard, topk).
  std::string arch() const {
    if (format == "msae") return arch_name(cfg.arch);
    const size_t dash = format.find('-');
    return dash == std::string::npos ? format : format.substr(dash + 1);
  }

  int64_t limit_of(const std::optional<int64_t>& prefix) const {
    if (!prefix) return params.D;
    if (*prefix < 0 || *prefix > params.D)
      throw py::value_error(cat("prefix must be a number of latents in [0, d_sae = ", params.D, "], got ", *prefix,
                                "; this SAE's Matryoshka prefixes are ", json(cfg.boundaries()).dump()));
    return *prefix;
  }
};

py::array_t<float> matrix(int64_t rows, int64_t cols) { return py::array_t<float>(std::vector<py::ssize_t>{rows, cols}); }

// A new 1-D numpy array holding a copy of n values.
template <class T>
py::array_t<T> vector_copy(const T* src, int64_t n) {
  py::array_t<T> out(std::vector<py::ssize_t>{n});
  std::copy(src, src + n, out.mutable_data());
  return out;
}
template <class T>
py::array_t<T> vector_copy(const std::vector<T>& v) {
  return vector_copy(v.data(), static_cast<int64_t>(v.size()));
}

py::array_t<float> encode(const Sae& s, py::handle x, std::optional<int64_t> prefix) {
  const Rows in = float32_rows(x, "x", s.params.d, "d_in");
  const int64_t limit = s.limit_of(prefix);
  const int64_t D = s.params.D;
  py::array_t<float> out = matrix(in.rows, D);
  float* z = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    PoolUse use;
    std::fill(z, z + in.rows * D, 0.0f);
    if (in.rows > 0) {
      const kernels::SparseCodes codes = encode_inference(s.cfg, s.params, in.data, in.rows, limit);
      for (int64_t r = 0; r < in.rows; ++r)
        for (int64_t j = codes.row_ptr[r]; j < codes.row_ptr[r + 1]; ++j) z[r * D + codes.ids[j]] = codes.vals[j];
    }
  }
  return out;
}

py::array_t<float> decode(const Sae& s, py::handle zobj, std::optional<int64_t> prefix) {
  const Rows z = float32_rows(zobj, "z", s.params.D, "d_sae");
  const int64_t limit = s.limit_of(prefix);
  const int64_t d = s.params.d, D = s.params.D;
  py::array_t<float> out = matrix(z.rows, d);
  float* r = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    PoolUse use;
    for (int64_t row = 0; row < z.rows; ++row) std::copy(s.params.b_dec.ptr(), s.params.b_dec.ptr() + d, r + row * d);
    // SAELens rescale_acts_by_decoder_norm: the codes divided by the decoder row norms first.
    std::vector<float> scaled;
    const float* zd = z.data;
    if (!s.params.rule.decoder_norm.empty() && z.rows > 0) {
      scaled.resize(static_cast<size_t>(z.rows * D));
      for (int64_t row = 0; row < z.rows; ++row)
        for (int64_t i = 0; i < D; ++i) scaled[row * D + i] = s.params.rule.decode_value(i, z.data[row * D + i]);
      zd = scaled.data();
    }
    // r += z[:, :limit] @ W_dec[:limit]  (z[:, limit:] is treated as 0)
    if (z.rows > 0 && limit > 0)
      kernels::sgemm(kernels::Trans::no, kernels::Trans::no, z.rows, d, limit, 1.0f, zd, D, s.params.W_dec.ptr(), d,
                     1.0f, r, d);
  }
  return out;
}

py::array_t<float> forward(const Sae& s, py::handle x, std::optional<int64_t> prefix) {
  const Rows in = float32_rows(x, "x", s.params.d, "d_in");
  const int64_t limit = s.limit_of(prefix);
  py::array_t<float> out = matrix(in.rows, s.params.d);
  float* r = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    PoolUse use;
    if (in.rows > 0) {
      const kernels::SparseCodes codes = encode_inference(s.cfg, s.params, in.data, in.rows, limit);
      msae::decode(s.params, codes, r);
    }
  }
  return out;
}

// The codes of encode() as CSR, without the dense (N, D) array: (indptr int64 (N+1), indices int32 (nnz),
// values float32 (nnz)); row r's latents are indices[indptr[r]:indptr[r+1]], ascending, with values > 0.
py::tuple encode_sparse(const Sae& s, py::handle x, std::optional<int64_t> prefix) {
  const Rows in = float32_rows(x, "x", s.params.d, "d_in");
  const int64_t limit = s.limit_of(prefix);
  kernels::SparseCodes codes;
  {
    py::gil_scoped_release nogil;
    PoolUse use;
    if (in.rows > 0) codes = encode_inference(s.cfg, s.params, in.data, in.rows, limit);
  }
  const int64_t nnz = codes.nnz();
  py::array_t<int64_t> indptr(std::vector<py::ssize_t>{in.rows + 1});
  py::array_t<int32_t> indices(std::vector<py::ssize_t>{nnz});
  py::array_t<float> values(std::vector<py::ssize_t>{nnz});
  if (in.rows > 0) {
    MSAE_ASSERT(static_cast<int64_t>(codes.row_ptr.size()) == in.rows + 1);
    std::copy(codes.row_ptr.begin(), codes.row_ptr.end(), indptr.mutable_data());
  } else {
    indptr.mutable_data()[0] = 0;
  }
  std::copy(codes.ids.begin(), codes.ids.begin() + nnz, indices.mutable_data());
  std::copy(codes.vals.begin(), codes.vals.begin() + nnz, values.mutable_data());
  return py::make_tuple(std::move(indptr), std::move(indices), std::move(values));
}

// eval::to_json(eval::evaluate(...)) on the first `rows` rows of x (all by default), in row order: what
// `msae eval --data` prints for the same rows, without its "sae", "data", "arch" and "format" fields.
py::object evaluate(const Sae& s, py::handle x, std::optional<int64_t> rows) {
  const Rows in = float32_rows(x, "x", s.params.d, "d_in");
  if (in.rows == 0) throw py::value_error("x: the array has 0 rows; nothing to evaluate");
  const int64_t n = rows.value_or(in.rows);
  if (n < 1 || n > in.rows)
    throw py::value_error(cat("rows must be in [1, ", in.rows, "] (the rows of x), got ", n));
  json report;
  {
    py::gil_scoped_release nogil;
    PoolUse use;
    data::DataOptions options;
    options.shuffle = false;  // rows in order, as msae eval reads --data
    const std::unique_ptr<data::ActivationSource> source = data::open_array(in.data, in.rows, in.cols, "x", options);
    report = eval::to_json(eval::evaluate(s.cfg, s.params, *source, n));
  }
  return to_python(report);
}

void refuse_existing(const std::string& dir, bool overwrite) {
  if (!overwrite && io::path_exists(dir)) {
    PyErr_SetString(PyExc_FileExistsError, cat("output directory '", dir, "' exists; pass overwrite=True to replace it").c_str());
    throw py::error_already_set();
  }
}

// msae.json for a saved SAE: the SAE's own record with the current config.
json info_for_save(const Sae& s) {
  json j = s.info.is_object() ? s.info : json::object();
  if (!j.contains("format")) j["format"] = "msae-sae";
  if (!j.contains("format_version")) j["format_version"] = 1;
  if (!j.contains("msae_version")) j["msae_version"] = version_string();
  if (!j.contains("git_commit")) j["git_commit"] = git_commit();
  if (!j.contains("data_normalization"))
    j["data_normalization"] = {{"method", "none"}, {"scale", 1.0}, {"folded_into_weights", true}};
  j["config"] = saedir::config_json(s.cfg);
  return j;
}

void save(const Sae& s, py::handle dir_obj, bool overwrite) {
  const std::string dir = io::without_trailing_slash(path_arg(dir_obj, "save: dir"));
  refuse_existing(dir, overwrite);
  const json info = info_for_save(s);
  py::gil_scoped_release nogil;
  const io::OutputLock lock = io::lock_output(dir, "msae Python Sae.save");
  io::report_leftovers(io::clean_leftovers(dir));
  io::PendingOutput pending(dir);
  if (s.format == "msae") {
    saedir::write_sae_files(pending.dir(), s.cfg, s.params, info);
  } else {  // an imported SAE keeps its own architecture (msae convert --to msae writes the same)
    saedir::SaeDirectory d;
    d.sae = s.cfg;
    d.params = s.params;
    d.format = s.format;
    d.source_cfg = s.source_cfg;
    saedir::write_sae_as(pending.dir(), d, saedir::Layout::msae);
  }
  pending.commit(overwrite);
}

std::shared_ptr<Sae> load(py::handle dir_obj) {
  const std::string dir = path_arg(dir_obj, "Sae.load: dir");
  auto s = std::make_shared<Sae>();
  {
    py::gil_scoped_release nogil;
    saedir::SaeDirectory loaded = saedir::read_sae_dir(dir);
    s->cfg = std::move(loaded.sae);
    s->params = std::move(loaded.params);
    s->info = std::move(loaded.msae_json);
    s->format = std::move(loaded.format);
    s->source_cfg = std::move(loaded.source_cfg);
  }
  return s;
}

// ---------------------------------------------------------------------------------------------
// Training data.
// ---------------------------------------------------------------------------------------------
// Rows from a Python iterator of (n, d) float32 arrays, cut into batches of B rows. Called with the GIL
// held. The first array fixes d. Rows are copied from the current array straight into the batch; the
// next array is requested only when the current one is used up, so a generator may refill and yield
// the same buffer each time.
class IteratorSource {
 public:
  IteratorSource(py::handle iterable, int64_t B) : it_(py::iter(iterable)), B_(B) {
    if (!pull()) throw py::value_error("data: the iterator yielded no arrays; expected (n, d) float32 numpy arrays");
  }
  int64_t d() const { return d_; }
  int64_t rows_seen() const { return rows_seen_; }
  int64_t items_seen() const { return items_; }
  int64_t rows_dropped() const { return dropped_; }

  // Fills out (B, d) with the next B rows; false when the iterator ends first (the rows of that
  // incomplete batch are dropped and counted in rows_dropped()).
  bool next_batch(float* out) {
    int64_t filled = 0;
    while (filled < B_) {
      if (head_ == cur_.rows && !pull()) {
        dropped_ = filled;
        return false;
      }
      const int64_t take = std::min(B_ - filled, cur_.rows - head_);
      std::memcpy(out + filled * d_, cur_.data + head_ * d_, sizeof(float) * take * d_);
      head_ += take;
      filled += take;
    }
    ids_.resize(B_);
    std::iota(ids_.begin(), ids_.end(), position_);
    data::check_finite(out, B_, d_, "data (iterator)", ids_.data());
    position_ += B_;
    return true;
  }

 private:
  // Replaces the current array by the iterator's next one; false at the end.
  bool pull() {
    cur_ = Rows{};
    head_ = 0;
    if (started_) ++it_;
    started_ = true;
    if (it_ == py::iterator::sentinel()) return false;
    const std::string what = cat("data: item ", items_, " of the iterator");
    cur_ = float32_rows(*it_, what, d_ > 0 ? d_ : -1, d_ > 0 ? "d_in, the width of item 0" : "d_in");
    if (d_ == 0) {
      if (cur_.cols == 0) throw py::value_error(cat(what, ": the array has 0 columns"));
      d_ = cur_.cols;
    }
    rows_seen_ += cur_.rows;
    items_ += 1;
    return true;
  }

  py::iterator it_;
  bool started_ = false;
  int64_t B_, d_ = 0;
  Rows cur_;          // the array being consumed
  int64_t head_ = 0;  // its rows already handed out
  std::vector<int64_t> ids_;  // (B) row numbers of the batch, for error messages
  int64_t position_ = 0, rows_seen_ = 0, items_ = 0, dropped_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Training: msae.train is a front end of the run layer (msae/run.h). Its keyword arguments are the rows of
// the option table (msae/options.h) that Python takes, plus progress.
// ---------------------------------------------------------------------------------------------

// A Python value as the JSON the option table checks (bool, int, float, str, os.PathLike, list/tuple;
// numpy scalars and arrays too). The table then checks the type against the option's row.
json option_value(const std::string& key, py::handle v) {
  const py::object o = py::reinterpret_borrow<py::object>(v);
  if (py::isinstance<py::bool_>(o) || py::isinstance(o, py::module_::import("numpy").attr("bool_"))) return o.cast<bool>();
  if (py::isinstance<py::str>(o)) return o.cast<std::string>();
  if (py::hasattr(o, "__fspath__")) return path_arg(o, key.c_str());
  if (py::isinstance<py::list>(o) || py::isinstance<py::tuple>(o) || py::isinstance<py::array>(o)) {
    json out = json::array();
    for (py::handle e : py::iter(o)) out.push_back(option_value(key, e));
    return out;
  }
  if (py::hasattr(o, "__index__")) return py::int_(o).cast<int64_t>();
  if (py::hasattr(o, "__float__")) return py::float_(o).cast<double>();
  throw py::type_error(cat(key, ": unsupported value of type ", type_name(o)));
}

// Restores msae's thread count when train() changed it for its own duration.
struct RestoreThreads {
  bool active = false;
  int n = 0;
  ~RestoreThreads() {
    if (!active) return;
    try {
      set_threads(n);
    } catch (...) {
    }
  }
};

// A progress bar on sys.stderr (tqdm-like): redrawn in place at most 5 times a second, and once at the end.
class ProgressBar {
 public:
  void update(int64_t done, int64_t planned, const StepStats& s, double tokens_per_s, int64_t d_sae) {
    const double now = clock_.seconds();
    const bool last = planned > 0 && done == planned;
    if (!last && now - last_draw_ < 0.2) return;
    last_draw_ = now;
    const double fvu = s.var_x > 0 ? s.mse_prefix.back() / s.var_x : 0.0;
    char buf[256];
    const double frac = planned > 0 ? static_cast<double>(done) / static_cast<double>(planned) : 0.0;
    const double eta = frac > 0 ? now * (1.0 - frac) / frac : 0.0;
    std::snprintf(buf, sizeof buf, "\rmsae: %3.0f%% step %lld/%s | %.0f tok/s | loss %.4g | FVU %.4f | L0 %.1f | dead %.1f%% | ETA %.0fs ",
                  100.0 * frac, static_cast<long long>(done), planned > 0 ? std::to_string(planned).c_str() : "?",
                  tokens_per_s, s.loss, fvu, s.l0, d_sae > 0 ? 100.0 * static_cast<double>(s.n_dead) / static_cast<double>(d_sae) : 0.0,
                  eta);
    write(buf);
    drawn_ = true;
  }
  void finish() {
    if (drawn_) write("\n");
    drawn_ = false;
  }

 private:
  static void write(const char* text) {
    py::object err = py::module_::import("sys").attr("stderr");
    if (err.is_none()) return;
    err.attr("write")(text);
    err.attr("flush")();
  }
  Timer clock_;
  double last_draw_ = -1e9;
  bool drawn_ = false;
};

std::shared_ptr<Sae> train_sae(py::handle data_obj, py::handle out_obj, py::handle progress, const py::kwargs& kwargs) {
  run::Options options;
  run::Inputs in;
  std::optional<Rows> array, eval_array;
  std::optional<IteratorSource> iter;
  // ---- options: every keyword is a row of the option table
  for (const auto& [k, v] : kwargs) {
    const std::string key = k.cast<std::string>();
    const run::OptionDef* row = run::find_option(key);
    if (!row || !(row->scopes & run::kPython) || key != row->key)
      throw py::type_error(cat("train() got an unexpected keyword argument '", key, "' (the options are in help(msae.train))"));
    if (v.is_none()) continue;
    if (key == "init" && py::isinstance<Sae>(v)) {
      in.init = v.cast<const Sae&>().params;
      in.init_name = "(an msae.Sae)";
      continue;
    }
    if (key == "eval_data" && py::isinstance<py::array>(v)) {
      eval_array = float32_rows(v, "eval_data", -1, "d_in");
      in.eval_array = eval_array->data;
      in.eval_array_rows = eval_array->rows;
      in.eval_array_d = eval_array->cols;
      in.eval_array_name = cat("numpy array (", eval_array->rows, " x ", eval_array->cols, ")");
      continue;
    }
    try {
      options.set(key, option_value(key, v));
    } catch (const Error& e) {
      throw py::value_error(e.what());
    }
  }
  if (!out_obj.is_none()) options.set("out", path_arg(out_obj, "out"));
  const bool resume = options.given("resume");
  if (!resume && options.given("out")) refuse_existing(io::without_trailing_slash(options.text("out")), options.flag("overwrite"));
  // ---- data: a path, a numpy array, or an iterable of arrays (with resume: what the run was started on)
  if (data_obj.is_none()) {
    if (!resume) throw py::value_error("data: expected a float32 numpy array (N, d), a path, or an iterable of arrays");
  } else if (py::isinstance<py::str>(data_obj) || py::hasattr(data_obj, "__fspath__")) {
    if (!resume) options.set("data", path_arg(data_obj, "data"));
  } else if (py::isinstance<py::array>(data_obj)) {
    array = float32_rows(data_obj, "data", -1, "d_in");
    if (array->rows == 0) throw py::value_error("data: the array has 0 rows; nothing to train on");
    if (array->cols == 0) throw py::value_error("data: the array has 0 columns");
    in.array = array->data;
    in.rows = array->rows;
    in.d = array->cols;
    in.array_name = cat("numpy array (", array->rows, " x ", array->cols, ")");
  } else if (py::hasattr(data_obj, "__iter__")) {
    const int64_t batch = options.automatic("batch") ? 4096 : options.integer("batch");
    iter.emplace(data_obj, batch);
    in.stream = [&](float* x, int64_t) {
      py::gil_scoped_acquire gil;
      return iter->next_batch(x);
    };
    in.stream_d = iter->d();
    in.stream_describe = [&] {
      return cat("python iterator (", iter->rows_seen(), " rows in ", iter->items_seen(), " arrays, ",
                 iter->rows_dropped(), " rows of an incomplete last batch unused)");
    };
  } else {
    throw py::type_error(cat("data: expected a float32 numpy array (N, d), a path, or an iterable of ",
                             "(n, d) float32 arrays; got ", type_name(data_obj)));
  }
  // ---- progress: True (a bar on stderr), False / None (quiet), or a callable progress(step, stats)
  const bool callable = PyCallable_Check(progress.ptr()) != 0;
  if (!callable && !progress.is_none() && !py::isinstance<py::bool_>(progress))
    throw py::type_error(cat("progress: expected True, False or a callable progress(step, stats), got ", type_name(progress)));
  const bool bar = !callable && !progress.is_none() && progress.cast<bool>();

  // ---- threads for this call only (restored afterwards); the run records the count it used
  RestoreThreads restore;
  if (options.given("threads") && options.integer("threads") > 0 && options.integer("threads") != num_threads()) {
    restore.n = num_threads();
    set_threads(static_cast<int>(options.integer("threads")));
    restore.active = true;
  }
  options.set("threads", num_threads());

  std::optional<py::error_already_set> pending;  // an exception raised in Python during the run
  ProgressBar pbar;
  int64_t d_sae = 0;
  run::Callbacks cb;
  cb.info = [](const std::string& line) { log_debug(line); };
  int64_t planned = -1;
  cb.started = [&](const SaeConfig& cfg, int64_t, int64_t steps) {
    d_sae = cfg.d_sae;
    planned = steps;
  };
  cb.stop = [&] {
    py::gil_scoped_acquire gil;
    if (PyErr_CheckSignals() != 0) {  // Ctrl-C: checkpoint (when there are checkpoints) and raise
      pending.emplace();
      return true;
    }
    return false;
  };
  if (bar)
    cb.progress = [&](int64_t done, int64_t steps_planned, const StepStats& s, double tps) {
      py::gil_scoped_acquire gil;
      pbar.update(done, steps_planned, s, tps, d_sae);
    };
  if (callable)
    cb.log = [&](const json& line) {
      py::gil_scoped_acquire gil;
      py::dict stats = to_python(line);
      stats["steps"] = planned >= 0 ? py::object(py::int_(planned)) : py::object(py::none());
      progress(line.at("step").get<int64_t>(), stats);
    };
  run::Result r;
  try {
    py::gil_scoped_release nogil;
    PoolUse use;
    r = run::train(options, in, cb);
  } catch (const Error& e) {
    py::gil_scoped_acquire gil;
    pbar.finish();
    if (e.kind() == ErrorKind::usage) throw py::value_error(e.what());
    throw;
  } catch (...) {
    pbar.finish();
    throw;
  }
  pbar.finish();
  if (pending) throw *pending;
  auto result = std::make_shared<Sae>();
  result->cfg = r.cfg;
  result->params = std::move(r.params);
  result->info = std::move(r.msae_json);
  result->info["training"]["api"] = "python";
  return result;
}

// ---------------------------------------------------------------------------------------------
// Ground-truth streams (docs/synth-bench.md): a feature model preset and a FeatureSampler over it.
// sample() is not thread-safe in C++; the mutex serializes calls on one object.
// ---------------------------------------------------------------------------------------------
struct FeatureStream {
  synth::FeatureModel model;
  std::unique_ptr<synth::FeatureSampler> sampler;
  uint64_t seed = 0, stream_seed = 0;
  std::mutex mu;

  FeatureStream(const std::string& preset, uint64_t seed_, std::optional<uint64_t> stream_seed_)
      : model(synth::make_preset(preset, seed_)), seed(seed_), stream_seed(stream_seed_.value_or(synth::synth_bench_train_stream(seed_))) {
    sampler = std::make_unique<synth::FeatureSampler>(model, stream_seed);
  }

  py::object sample(int64_t rows, bool with_features) {
    if (rows < 0) throw py::value_error(cat("rows must be >= 0, got ", rows));
    py::array_t<float> x = matrix(rows, model.d);
    float* out = x.mutable_data();
    synth::FiredFeatures fired;
    {
      py::gil_scoped_release nogil;
      std::lock_guard<std::mutex> lock(mu);
      PoolUse pool;
      sampler->sample(rows, out, with_features ? &fired : nullptr);
    }
    if (!with_features) return x;
    return py::make_tuple(std::move(x), vector_copy(fired.offsets), vector_copy(fired.ids));
  }

  py::dict truth() const {
    const int64_t N = model.n_features();
    py::dict t;
    py::array_t<float> dirs = matrix(N, model.d);
    std::copy(model.directions.data.begin(), model.directions.data.end(), dirs.mutable_data());
    t["directions"] = std::move(dirs);
    t["bias"] = vector_copy(model.bias.ptr(), model.d);
    t["parent"] = vector_copy(model.parent);
    t["depth"] = vector_copy(model.depth);
    t["cond_prob"] = vector_copy(model.cond_prob);
    t["marginal"] = vector_copy(model.marginal);
    t["expected_l0"] = model.expected_l0();
    return t;
  }
};

// ---------------------------------------------------------------------------------------------
// Docstrings.
// ---------------------------------------------------------------------------------------------
constexpr const char* kModuleDoc = R"doc(Matryoshka sparse autoencoders (msae) from Python.

Load an SAE directory (SAELens layout) with Sae.load, run it on numpy arrays with Sae.encode,
Sae.encode_sparse, Sae.decode and Sae.forward, measure it with msae.evaluate, and train one with
msae.train. FeatureStream gives the synthetic ground-truth activations of `msae synth-bench`. See
docs/python.md.

Activation matrices must be C-contiguous float32 numpy arrays of shape (N, d): msae reads them
in place. Any other dtype raises TypeError and any other shape or memory layout raises ValueError;
numpy.ascontiguousarray(x, dtype=numpy.float32) converts. msae's own errors are raised as
ValueError (bad arguments or options) or RuntimeError (unreadable or malformed files, bad data).
The GIL is released while msae computes.)doc";

constexpr const char* kSaeDoc = R"doc(A trained sparse autoencoder (immutable).

Inference is SAELens's JumpReLU (docs/formats.md):
    h = (x - b_dec) @ W_enc + b_enc,  z = h * (h > threshold),  x_hat = z @ W_dec + b_dec
(b_enc is zero unless the SAE was trained with an encoder bias). A Matryoshka prefix of width m
(the sub-SAE of the first m latents) is the same computation with z[:, m:] = 0; the widths of
the trained nested groups are group_boundaries. An SAE loaded from SAELens or sparsify encodes
with its trainer's rule instead (per-latent thresholds, ReLU or per-row TopK; docs/interop.md).

Create one with Sae.load(dir) or msae.train(...).)doc";

constexpr const char* kLoadDoc = R"doc(Load an SAE directory: sae_weights.safetensors (W_enc, W_dec, b_enc, b_dec, threshold) with
optional cfg.json and msae.json, as written by `msae train`, msae.train or Sae.save; also SAELens
jumprelu (its per-latent thresholds are loaded and applied exactly, as SAELens's JumpReLUSAE does),
standard and topk (with rescale_acts_by_decoder_norm) directories, and EleutherAI sparsify directories
(cfg.json + sae.safetensors), each with its own encoding rule (docs/interop.md); arch and format say
which.

Loading is strict, through the reader msae eval uses: raises RuntimeError naming the file and the
tensor or key when the directory is missing or malformed, when a tensor the encoding needs is missing
(an msae directory's threshold included), when any weight or threshold is NaN or Inf (with the count
and the first index; `msae inspect DIR` lists them), or when the metadata disagrees with the tensors or
with itself (group sizes that do not sum to d_sae, k outside [1, d_sae], cfg.json against msae.json).)doc";

constexpr const char* kEncodeDoc = R"doc(Encode activations into latent codes.

x: C-contiguous float32 array (N, d_in), read in place.
prefix: None for the whole SAE, or a number of latents m in [0, d_sae]: latents m and above are
    zero (a Matryoshka sub-SAE when m is one of group_boundaries).
Returns a new dense float32 array (N, d_sae) of JumpReLU codes.)doc";

constexpr const char* kEncodeSparseDoc = R"doc(Encode activations into sparse latent codes, without a dense (N, d_sae) array.

x: C-contiguous float32 array (N, d_in), read in place.
prefix: None or a number of latents m in [0, d_sae], as in encode.
Returns (indptr, indices, values), the codes as CSR: indptr int64 (N + 1,), indices int32 (nnz,)
and values float32 (nnz,). Row r's active latents are indices[indptr[r]:indptr[r + 1]], in
ascending order, with their values (all > 0) at the same positions: exactly the nonzero entries of
encode(x, prefix). scipy.sparse.csr_matrix((values, indices, indptr), shape=(N, d_sae)) wraps them
without a copy.)doc";

constexpr const char* kDecodeDoc = R"doc(Decode latent codes: x_hat = z[:, :m] @ W_dec[:m] + b_dec.

z: C-contiguous float32 array (N, d_sae), read in place.
prefix: None (m = d_sae) or a number of latents m in [0, d_sae]; columns m and above of z are
    ignored.
With an imported SAELens TopK SAE that has rescale_acts_by_decoder_norm, z is divided by the
decoder row norms first, as SAELens's TopKSAE.decode does.
Returns a new float32 array (N, d_in).)doc";

constexpr const char* kForwardDoc = R"doc(Reconstruct activations: decode(encode(x, prefix), prefix), computed sparsely.

x: C-contiguous float32 array (N, d_in), read in place.
prefix: None or a number of latents m in [0, d_sae], as in encode.
Returns a new float32 array (N, d_in).)doc";

constexpr const char* kSaveDoc = R"doc(Write the SAE as a directory in the SAELens layout (cfg.json, sae_weights.safetensors)
plus msae.json. The directory is written under a temporary name and renamed into place.

Raises FileExistsError when dir exists, unless overwrite=True.)doc";

constexpr const char* kEvaluateDoc = R"doc(Reconstruction and sparsity metrics of an SAE per Matryoshka prefix, as `msae eval` computes them.

sae: an msae.Sae.
x: C-contiguous float32 array (N, d_in), read in place.
rows: None (all N rows) or the number of leading rows of x to evaluate, in [1, N].
Returns a new dict, the JSON that `msae eval --data` prints for the same rows (without its sae,
data, arch and format fields):
    rows, threshold;
    prefixes: one dict per group boundary m_g, each {group, latents (= m_g), mse, fvu,
        explained_variance, l0} for the sub-SAE of the first m_g latents;
    whole: the same for the whole SAE (latents = d_sae);
    group_l0_share (the share of all activations in each group), dead_fraction (latents that never
    fired), dense_fraction (latents firing on more than 10% of rows).
mse is the mean over rows and columns of (x_hat - x)^2; fvu = sum (x_hat - x)^2 / sum (x - mean(x))^2.
Raises RuntimeError on a non-finite value in x (naming the row and column).)doc";

// msae.train's docstring: how data, out and progress work, then every option of the table that Python takes.
const std::string& train_doc() {
  static const std::string doc = [] {
    std::string d = R"doc(Train an SAE through msae's run layer, as `msae train` does (docs/python.md, docs/cli.md).

data: one of
    - a C-contiguous float32 numpy array (N, d), read in place (np.load(..., mmap_mode="r")
      works), exactly as `msae train --data` reads a .npy file;
    - a path (str or os.PathLike): a .npy / .safetensors / raw file, a directory of shards or a
      glob, memory-mapped (docs/data.md);
    - any iterable of C-contiguous float32 arrays (n, d) (n may vary): rows are taken in order and
      cut into batches of `batch` rows; training stops after `steps` steps or when the iterator is
      exhausted. No shuffling, normalization, hold-out, checkpoints or resume apply.
    With resume=DIR, the data the run was started on: None for a path (recorded), the same array.
out: None (nothing written), or a directory to write like `msae train --out` (SAELens layout,
    msae.json, metrics.jsonl, checkpoints/). Raises FileExistsError when it exists, unless
    overwrite=True.
progress: True (default: a progress bar on stderr), False (quiet), or a callable
    progress(step, stats) called at every metrics.jsonl point (every log_every steps and the
    last one) with that line as a dict (step, tokens, loss, l_aux, fvu, l0, mse_prefix, n_dead,
    dead_fraction, threshold, grad_norm, seconds, tokens_per_s: means over the interval). An
    exception raised by progress stops training and propagates; Ctrl-C stops it, writes a
    checkpoint when out is given (continue with resume=out) and raises KeyboardInterrupt.

The final evaluation (Sae.info["final_metrics"]) is on rows training did not read: eval_data, or
the last holdout_rows rows of the data (default min(eval_rows, N/10)); it says which.
Returns the trained Sae. The same data, options, seed and thread count give bit-identical weights,
and the same weights as `msae train` with the same options.

Options (one row each of msae's option table; the CLI spells them --with-dashes):
)doc";
    for (const run::OptionDef& row : run::option_table()) {
      if (!(row.scopes & run::kPython)) continue;
      std::string def = row.def.is_null() ? "automatic" : row.def.is_string() ? "'" + row.def.get<std::string>() + "'" : row.def.dump();
      if (row.type == run::OptType::flag) def = row.def.get<bool>() ? "True" : "False";
      d += cat("  ", row.key, " (", run::opt_type_name(row.type), ", default ", def, "): ", row.doc, "\n");
    }
    return d;
  }();
  return doc;
}

}  // namespace
}  // namespace msae::python

constexpr const char* kFeatureStreamDoc = R"doc(A ground-truth activation stream: a feature model preset of `msae synth-bench`
(docs/synth-bench.md) and its sampler.

FeatureStream(preset, seed=0, stream_seed=None)
    preset: "synth-lite", "synth-16k", "synthsaebench-16k", "tree" or "absorption"; seed: the feature model's seed;
    stream_seed: the stream's seed. The default, 2 * seed + 1, is the stream `msae synth-bench
    --seeds seed` trains on, so a model trained here on sample() sees the same rows.

Row i depends only on (preset, seed, stream_seed, i), whatever the thread count or the batch sizes.
truth holds the answer key: directions (N, d) float32 unit rows, bias (d,), parent (N,) int32 (-1 for
none), depth (N,), cond_prob and marginal (N,) float64, expected_l0.)doc";

constexpr const char* kSampleDoc = R"doc(The next `rows` rows of the stream, as a C-contiguous float32 array (rows, d).

With with_features=True, returns (x, fired_offsets, fired_ids): which features fired in each row, as
CSR (fired_ids[fired_offsets[r]:fired_offsets[r + 1]] ascending, int64 offsets, int32 ids).)doc";

PYBIND11_MODULE(msae, m) {
  msae::set_option_spelling(msae::OptionSpelling::python);  // errors name keywords: d_sae, not --d-sae
  using namespace msae::python;
  namespace ms = msae;
  m.doc() = kModuleDoc;
  m.attr("__version__") = ms::version_string();
  m.attr("git_commit") = ms::git_commit();

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const ms::Error& e) {
      PyErr_SetString(e.kind() == ms::ErrorKind::usage ? PyExc_ValueError : PyExc_RuntimeError, e.what());
    }
  });

  py::class_<Sae, std::shared_ptr<Sae>>(m, "Sae", kSaeDoc)
      .def_static("load", &load, py::arg("dir"), kLoadDoc)
      .def(
          "encode", [](const Sae& s, py::handle x, std::optional<int64_t> prefix) { return encode(s, x, prefix); },
          py::arg("x"), py::arg("prefix") = py::none(), kEncodeDoc)
      .def(
          "encode_sparse",
          [](const Sae& s, py::handle x, std::optional<int64_t> prefix) { return encode_sparse(s, x, prefix); },
          py::arg("x"), py::arg("prefix") = py::none(), kEncodeSparseDoc)
      .def(
          "decode", [](const Sae& s, py::handle z, std::optional<int64_t> prefix) { return decode(s, z, prefix); },
          py::arg("z"), py::arg("prefix") = py::none(), kDecodeDoc)
      .def(
          "forward", [](const Sae& s, py::handle x, std::optional<int64_t> prefix) { return forward(s, x, prefix); },
          py::arg("x"), py::arg("prefix") = py::none(), kForwardDoc)
      .def("save", &save, py::arg("dir"), py::arg("overwrite") = false, kSaveDoc)
      .def_property_readonly("d_in", [](const Sae& s) { return s.params.d; }, "Input width d.")
      .def_property_readonly("d_sae", [](const Sae& s) { return s.params.D; }, "Number of latents D.")
      .def_property_readonly("arch", [](const Sae& s) { return s.arch(); },
                             "Architecture: for an SAE msae trained, its training architecture (matryoshka, batchtopk, "
                             "topk or relu_l1); for one imported from SAELens or sparsify, its inference architecture "
                             "(jumprelu, standard or topk; format says which trainer).")
      .def_property_readonly("format", [](const Sae& s) { return s.format; },
                             "Where the SAE came from (docs/interop.md): msae, saelens-jumprelu, saelens-standard, "
                             "saelens-topk or sparsify-topk.")
      .def_property_readonly("k", [](const Sae& s) { return s.cfg.k; }, "Mean active latents per row in training.")
      .def_property_readonly("group_sizes", [](const Sae& s) { return s.cfg.group_sizes; },
                             "Matryoshka group sizes (one group for batchtopk / topk).")
      .def_property_readonly("group_boundaries", [](const Sae& s) { return s.cfg.boundaries(); },
                             "Cumulative group sizes m_1 < ... < m_G = d_sae: the Matryoshka prefix widths.")
      .def_property_readonly("encoder_bias", [](const Sae& s) { return s.cfg.encoder_bias; },
                             "Whether b_enc is part of the encoder (always true for an SAE from another trainer).")
      .def_property_readonly("threshold", [](const Sae& s) { return s.params.threshold; },
                             "The global JumpReLU threshold.")
      .def_property_readonly(
          "W_enc",
          [](const Sae& s) {
            py::array_t<float> w = matrix(s.params.d, s.params.D);
            float* o = w.mutable_data();
            const float* t = s.params.W_enc_t.ptr();
            for (int64_t i = 0; i < s.params.D; ++i)
              for (int64_t j = 0; j < s.params.d; ++j) o[j * s.params.D + i] = t[i * s.params.d + j];
            return w;
          },
          "Encoder weights, a float32 copy (d_in, d_sae).")
      .def_property_readonly(
          "W_dec",
          [](const Sae& s) {
            py::array_t<float> w = matrix(s.params.D, s.params.d);
            std::copy(s.params.W_dec.data.begin(), s.params.W_dec.data.end(), w.mutable_data());
            return w;
          },
          "Decoder weights, a float32 copy (d_sae, d_in); rows have unit norm.")
      .def_property_readonly("b_enc", [](const Sae& s) { return vector_copy(s.params.b_enc.ptr(), s.params.D); },
                             "Encoder bias, a float32 copy (d_sae).")
      .def_property_readonly("b_dec", [](const Sae& s) { return vector_copy(s.params.b_dec.ptr(), s.params.d); },
                             "Decoder bias, a float32 copy (d_in).")
      .def_property_readonly("info", [](const Sae& s) { return to_python(s.info); },
                             "msae.json as a dict: config, training summary, final metrics ({} if absent).")
      .def("__repr__", [](const Sae& s) {
        return ms::cat("msae.Sae(arch='", s.arch(), "', d_in=", s.params.d, ", d_sae=", s.params.D,
                       ", k=", s.cfg.k, ", group_boundaries=", json(s.cfg.boundaries()).dump(), ")");
      });

  m.def(
      "train",
      [](py::handle data, py::handle out, py::handle progress, const py::kwargs& kwargs) {
        return train_sae(data, out, progress, kwargs);
      },
      py::arg("data") = py::none(), py::arg("out") = py::none(), py::kw_only(), py::arg("progress") = true,
      train_doc().c_str());

  m.def(
      "evaluate",
      [](const Sae& sae, py::handle x, std::optional<int64_t> rows) { return evaluate(sae, x, rows); },
      py::arg("sae"), py::arg("x"), py::kw_only(), py::arg("rows") = py::none(), kEvaluateDoc);

  py::class_<FeatureStream>(m, "FeatureStream", kFeatureStreamDoc)
      .def(py::init<const std::string&, uint64_t, std::optional<uint64_t>>(), py::arg("preset"), py::arg("seed") = 0,
           py::arg("stream_seed") = py::none())
      .def("sample", &FeatureStream::sample, py::arg("rows"), py::kw_only(), py::arg("with_features") = false,
           kSampleDoc)
      .def("seek", [](FeatureStream& f, int64_t row) {
            if (row < 0) throw py::value_error(ms::cat("row must be >= 0, got ", row));
            std::lock_guard<std::mutex> lock(f.mu);
            f.sampler->seek(row);
          }, py::arg("row"), "Continue the stream at row `row` (exact: rows depend only on their index).")
      .def_property_readonly("position", [](FeatureStream& f) {
            std::lock_guard<std::mutex> lock(f.mu);
            return f.sampler->position();
          }, "The index of the next row sample() returns.")
      .def_property_readonly("d", [](const FeatureStream& f) { return f.model.d; }, "Activation width.")
      .def_property_readonly("n_features", [](const FeatureStream& f) { return f.model.n_features(); },
                             "Number of true features N.")
      .def_property_readonly("truth", &FeatureStream::truth, "The answer key (a new dict of copies).")
      .def("__repr__", [](const FeatureStream& f) {
        return ms::cat("msae.FeatureStream(preset='", f.model.name, "', seed=", f.seed, ", stream_seed=", f.stream_seed,
                   ", d=", f.model.d, ", n_features=", f.model.n_features(), ")");
      });

  m.def("set_num_threads", &set_threads, py::arg("n"),
        "Set the number of threads msae computes with (n <= 0: all hardware threads). Process-wide.");
  m.def("num_threads", &ms::num_threads, "The number of threads msae computes with.");
}
