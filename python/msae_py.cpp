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
    // r += z[:, :limit] @ W_dec[:limit]  (z[:, limit:] is treated as 0)
    if (z.rows > 0 && limit > 0)
      kernels::sgemm(kernels::Trans::no, kernels::Trans::no, z.rows, d, limit, 1.0f, z.data, D, s.params.W_dec.ptr(), d,
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

// Removes a trailing '/' so that "DIR/" + ".tmp-..." names a sibling of DIR, not a child.
std::string strip_slashes(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  return path;
}

std::atomic<int> g_tmp_counter{0};
std::string temporary_sibling(const std::string& dir) {
  return cat(dir, ".tmp-", getpid(), "-", g_tmp_counter.fetch_add(1));
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
  const std::string dir = strip_slashes(path_arg(dir_obj, "save: dir"));
  refuse_existing(dir, overwrite);
  const json info = info_for_save(s);
  py::gil_scoped_release nogil;
  const std::string tmp = temporary_sibling(dir);
  try {
    io::create_directories(tmp);
    saedir::write_sae_files(tmp, s.cfg, s.params, info);
    io::commit_directory(tmp, dir, overwrite);
  } catch (...) {
    io::remove_all(tmp);
    throw;
  }
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
// Training.
// ---------------------------------------------------------------------------------------------
struct TrainArgs {
  std::string arch = "matryoshka";
  std::optional<int64_t> d_sae;
  std::optional<std::vector<int64_t>> group_sizes;
  int64_t k = 32;
  int64_t batch = 4096;
  std::optional<int64_t> steps, tokens;
  double lr = 3e-4;
  uint64_t seed = 0;
  py::object init = py::none();
  bool shuffle = true;
  std::optional<int64_t> shuffle_buffer;  // None: automatic (as msae train)
  std::string on_nonfinite = "error";
  std::string normalize = "none";
  std::string dtype, tensor;              // for path data, as --dtype / --tensor
  int64_t d_in = 0;                       // raw files, as --d-in
  int64_t dead_after_batches = 20;
  int64_t aux_k = 512;
  double aux_coef = 1.0 / 32.0;
  double max_grad_norm = 1e5;
  bool encoder_bias = false;
  int threads = 0;
  py::object progress = py::none();
  std::optional<int64_t> log_every;
  std::string engine = "sparse";
  bool overwrite = false;
};

// msae's messages name CLI flags; a Python caller wrote keywords.
std::string python_names(std::string msg) {
  static const std::pair<const char*, const char*> names[] = {
      {"--dead-after-batches", "dead_after_batches"}, {"--group-sizes", "group_sizes"}, {"--d-sae", "d_sae"},
      {"--aux-coef", "aux_coef"}, {"--aux-k", "aux_k"}, {"--arch", "arch"}, {"--engine", "engine"},
      {"--init", "init"}, {"--k", "k"}, {"--overwrite", "overwrite=True"}, {"--shuffle-buffer", "shuffle_buffer"},
      {"--on-nonfinite", "on_nonfinite"}, {"--dtype", "dtype"}, {"--tensor", "tensor"}, {"--d-in", "d_in"}};
  for (const auto& [flag, name] : names) {
    const std::string f(flag);
    size_t at = msg.find(f);
    while (at != std::string::npos) {
      const size_t end = at + f.size();
      if (end < msg.size() && (std::isalnum(static_cast<unsigned char>(msg[end])) || msg[end] == '-')) {
        at = msg.find(f, end);
        continue;
      }
      msg.replace(at, f.size(), name);
      at = msg.find(f, at + std::strlen(name));
    }
  }
  return msg;
}

constexpr int64_t kEvalRows = 16384;  // as msae train: the final evaluation reads at most this many rows

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

std::shared_ptr<Sae> train_sae(py::handle data_obj, py::handle out_obj, TrainArgs a) {
  // ---- data: a path to a .npy file, a numpy array, or an iterable of arrays
  std::string npy_path;
  std::optional<Rows> array;
  std::optional<IteratorSource> iter;
  std::unique_ptr<data::ActivationSource> source;  // for a path or an array
  if (py::isinstance<py::str>(data_obj) || py::hasattr(data_obj, "__fspath__")) {
    npy_path = path_arg(data_obj, "data");
  } else if (py::isinstance<py::array>(data_obj)) {
    array = float32_rows(data_obj, "data", -1, "d_in");
    if (array->rows == 0) throw py::value_error("data: the array has 0 rows; nothing to train on");
    if (array->cols == 0) throw py::value_error("data: the array has 0 columns");
  } else if (py::hasattr(data_obj, "__iter__")) {
    if (a.batch <= 0) throw py::value_error(cat("batch must be positive, got ", a.batch));
    iter.emplace(data_obj, a.batch);
  } else {
    throw py::type_error(cat("data: expected a float32 numpy array (N, d), a path to a .npy file, or an iterable of ",
                             "(n, d) float32 arrays; got ", type_name(data_obj)));
  }
  std::optional<std::string> out;
  if (!out_obj.is_none()) out = strip_slashes(path_arg(out_obj, "out"));
  if (out) refuse_existing(*out, a.overwrite);
  if (!a.progress.is_none() && !PyCallable_Check(a.progress.ptr()))
    throw py::type_error(cat("progress: expected a callable progress(step, stats), got ", type_name(a.progress)));

  try {
    // The data options of msae train (docs/data.md); an array is read like one float32 shard.
    data::DataOptions dopt;
    dopt.dtype = a.dtype;
    dopt.tensor = a.tensor;
    dopt.d_in = a.d_in;
    dopt.shuffle = a.shuffle;
    dopt.shuffle_buffer = a.shuffle_buffer ? *a.shuffle_buffer : -1;
    if (a.shuffle_buffer && *a.shuffle_buffer < 0) usage_error("shuffle_buffer must be >= 0, got ", *a.shuffle_buffer);
    dopt.seed = a.seed;
    dopt.on_nonfinite = data::parse_on_nonfinite(a.on_nonfinite);
    if (a.normalize != "none" && a.normalize != "expected-norm")
      usage_error("normalize: unknown method '", a.normalize, "'; expected 'none' or 'expected-norm'");
    if (a.normalize != "none" && iter)
      usage_error("normalize='expected-norm' needs the data up front (a path or an array), not an iterator");
    auto open_source = [&](const data::DataOptions& o) {
      return array ? data::open_array(array->data, array->rows, array->cols, "numpy array", o)
                   : data::open_data(npy_path, o);
    };
    float scale = 1.0f;
    if (a.normalize == "expected-norm") {
      data::DataOptions so = dopt;
      so.shuffle = true;
      so.shuffle_buffer = 65536;
      so.seed = a.seed ^ 0x6e6f726dULL;
      py::gil_scoped_release nogil;
      auto sample = open_source(so);
      scale = static_cast<float>(data::estimate_norm_scale(*sample, std::min<int64_t>(sample->rows(), 262144)));
    }
    dopt.scale = scale;
    if (!npy_path.empty() || array) source = open_source(dopt);
    const int64_t d = source ? source->d() : iter->d();

    // ---- config, as msae train builds it
    std::unique_ptr<SaeParams> init_params;
    std::string init_desc;
    SaeConfig cfg;
    cfg.arch = parse_arch(a.arch);
    cfg.d_in = d;
    if (a.d_sae && *a.d_sae <= 0) usage_error("d_sae must be positive, got ", *a.d_sae);
    if (!a.init.is_none()) {
      SaeParams p;
      if (py::isinstance<Sae>(a.init)) {
        p = a.init.cast<const Sae&>().params;
        init_desc = "(an msae.Sae)";
      } else {
        init_desc = path_arg(a.init, "init");
        py::gil_scoped_release nogil;
        p = saedir::read_sae_dir(init_desc).params;
      }
      if (p.d != d) usage_error("init ", init_desc, ": the SAE has d_in ", p.d, " but the data has width ", d);
      if (!a.d_sae) a.d_sae = p.D;
      if (p.D != *a.d_sae) usage_error("init ", init_desc, ": the SAE has d_sae ", p.D, " but d_sae is ", *a.d_sae);
      init_params = std::make_unique<SaeParams>(std::move(p));
      init_params->rule = EncodeRule{};  // an imported SAE's inference rule is not the trained one
      if (scale != 1.0f) saedir::unfold_input_scale(*init_params, scale);  // init takes raw x; training sees x * scale
    }
    cfg.d_sae = a.d_sae ? *a.d_sae : 8 * d;
    cfg.k = a.k;
    if (a.group_sizes) {
      if (a.group_sizes->empty()) usage_error("group_sizes: empty list");
      cfg.group_sizes = *a.group_sizes;
    }
    cfg.encoder_bias = a.encoder_bias;
    cfg.dead_after_batches = a.dead_after_batches;
    cfg.aux_k = a.aux_k;
    cfg.aux_coef = static_cast<float>(a.aux_coef);
    cfg.finalize();

    train::TrainOptions opt;
    opt.sae = cfg;
    opt.batch = a.batch;
    if (opt.batch <= 0) usage_error("batch must be positive, got ", opt.batch);
    if (a.steps && a.tokens) usage_error("give steps or tokens, not both");
    int64_t steps = -1;  // -1: until the iterator ends
    if (a.steps) {
      if (*a.steps <= 0) usage_error("steps must be positive, got ", *a.steps);
      steps = *a.steps;
    } else if (a.tokens) {
      if (*a.tokens <= 0) usage_error("tokens must be positive, got ", *a.tokens);
      steps = (*a.tokens + opt.batch - 1) / opt.batch;
    } else if (source) {
      steps = std::max<int64_t>(1, (source->rows() + opt.batch - 1) / opt.batch);  // one epoch
    }
    opt.steps = std::max<int64_t>(steps, 0);
    if (!(a.lr > 0.0)) usage_error("lr must be positive, got ", a.lr);
    if (!(a.max_grad_norm > 0.0)) usage_error("max_grad_norm must be positive, got ", a.max_grad_norm);
    opt.adam.lr = static_cast<float>(a.lr);
    opt.max_grad_norm = static_cast<float>(a.max_grad_norm);
    opt.seed = a.seed;
    opt.engine = a.engine;
    if (a.log_every && *a.log_every <= 0) usage_error("log_every must be positive, got ", *a.log_every);
    const int64_t log_every = a.log_every ? *a.log_every : steps > 0 ? std::max<int64_t>(1, steps / 100) : 100;
    opt.log_every = log_every;
    if (a.threads < 0) usage_error("threads must be >= 0, got ", a.threads);

    // ---- threads for this call only (restored afterwards; destroyed after `use` below)
    RestoreThreads restore;
    if (a.threads > 0 && a.threads != num_threads()) {
      restore.n = num_threads();
      set_threads(a.threads);
      restore.active = true;
    }
    std::optional<PoolUse> use;
    std::optional<train::Trainer> trainer;
    {
      py::gil_scoped_release nogil;
      use.emplace();
      SaeParams params = init_params ? std::move(*init_params) : SaeParams::init(d, cfg.d_sae, a.seed);
      trainer.emplace(opt, std::move(params));
    }

    // ---- temporary output directory, renamed into place at the end (as msae train does)
    std::string tmp;
    std::ofstream metrics;
    if (out) {
      tmp = temporary_sibling(*out);
      io::remove_all(tmp);
      io::create_directories(tmp);
      metrics.open(tmp + "/metrics.jsonl");
      if (!metrics) runtime_error("cannot write ", tmp, "/metrics.jsonl");
    }

    std::vector<float> batch(static_cast<size_t>(opt.batch * d));
    train::MetricsInterval interval;
    Timer clock;
    int64_t done = 0, last_logged = 0;
    StepStats last;  // the latest step's statistics
    // One logging point: a metrics.jsonl line (interval means) and the progress callback (this step).
    auto log_point = [&]() {
      last_logged = done;
      const double secs = clock.seconds();
      const double tps = static_cast<double>(done * opt.batch) / std::max(secs, 1e-9);
      if (out) {
        json line = interval.to_json();
        line["step"] = done;
        line["tokens"] = done * opt.batch;
        line["seconds"] = secs;
        line["tokens_per_s"] = tps;
        line["n_dead"] = last.n_dead;
        line["dead_fraction"] = static_cast<double>(last.n_dead) / static_cast<double>(cfg.d_sae);
        line["threshold"] = trainer->params().threshold;
        line["grad_norm"] = trainer->last_grad_norm();
        metrics << line.dump() << "\n";
      }
      interval = train::MetricsInterval{};
      if (a.progress.is_none()) return;
      py::dict stats;
      stats["loss"] = last.loss;
      stats["l_rec"] = last.l_rec;
      stats["l_aux"] = last.l_aux;
      stats["mse_prefix"] = last.mse_prefix;
      stats["l0"] = last.l0;
      stats["n_dead"] = last.n_dead;
      stats["fvu"] = last.var_x > 0 ? last.mse_prefix.back() / last.var_x : 0.0;
      stats["threshold"] = trainer->params().threshold;
      stats["grad_norm"] = trainer->last_grad_norm();
      stats["tokens"] = done * opt.batch;
      stats["seconds"] = secs;
      stats["tokens_per_s"] = tps;
      stats["steps"] = steps >= 0 ? py::object(py::int_(steps)) : py::object(py::none());
      a.progress(done, stats);
    };

    try {
      while (steps < 0 || done < steps) {
        if (iter) {
          if (!iter->next_batch(batch.data())) break;
          py::gil_scoped_release nogil;
          last = trainer->step(batch.data());
        } else {
          py::gil_scoped_release nogil;
          source->next_batch(opt.batch, batch.data());
          last = trainer->step(batch.data());
        }
        done += 1;
        if (!std::isfinite(last.loss))
          runtime_error("the loss became ", last.loss, " at step ", done, "; lower lr or check the data");
        interval.add(last);
        if (done % log_every == 0 || done == steps) log_point();
        if (PyErr_CheckSignals() != 0) throw py::error_already_set();  // Ctrl-C stops training
      }
      if (done == 0)
        usage_error("data: the iterator yielded ", iter->rows_seen(), " rows, fewer than one batch of ", opt.batch,
                    " rows; nothing to train on (lower batch)");
      if (done != last_logged) log_point();  // the iterator ended between two logging points
    } catch (...) {
      if (out) {
        metrics.close();
        io::remove_all(tmp);
      }
      throw;
    }
    const double train_seconds = clock.seconds();

    // ---- final evaluation on the data in file order, as msae train does (not possible for an iterator)
    // The returned SAE takes raw activations: the normalization is folded into its weights.
    if (scale != 1.0f) saedir::fold_input_scale(trainer->params(), scale);
    json final_metrics;
    data::DataStats dstats;
    if (source) {
      dstats = source->stats();
      data::DataOptions eo = dopt;
      eo.shuffle = false;
      eo.scale = 1.0f;
      std::unique_ptr<data::ActivationSource> eval_source = open_source(eo);
      const int64_t eval_rows = std::min(eval_source->rows(), kEvalRows);
      py::gil_scoped_release nogil;
      final_metrics = eval::to_json(eval::evaluate(cfg, trainer->params(), *eval_source, eval_rows));
    }

    std::string data_desc;
    if (!npy_path.empty())
      data_desc = npy_path;
    else if (array)
      data_desc = cat("numpy array (", array->rows, " x ", array->cols, ")");
    else
      data_desc = cat("python iterator (", iter->rows_seen(), " rows in ", iter->items_seen(), " arrays, ",
                      iter->rows_dropped(), " rows of an incomplete last batch unused)");
    train::RunFacts facts;
    facts.steps = done;
    facts.steps_planned = steps >= 0 ? json(steps) : json(nullptr);
    facts.seed = a.seed;
    facts.shuffle = source != nullptr && a.shuffle;
    facts.data = data_desc;
    facts.init = init_desc.empty() ? json(nullptr) : json(init_desc);
    facts.normalize = a.normalize;
    facts.scale = scale;
    facts.epochs = dstats.epochs;
    facts.nonfinite_rows_skipped = dstats.nonfinite_skipped;
    facts.seconds = train_seconds;
    facts.tokens_per_s = static_cast<double>(done * opt.batch) / std::max(train_seconds, 1e-9);
    json info = train::run_record(*trainer, facts);
    info["training"]["api"] = "python";
    if (source) info["final_metrics"] = final_metrics;

    auto result = std::make_shared<Sae>();
    result->cfg = cfg;
    result->params = std::move(trainer->params());
    result->info = std::move(info);
    if (out) {
      metrics.close();
      try {
        py::gil_scoped_release nogil;
        saedir::write_sae_files(tmp, result->cfg, result->params, result->info);
        io::commit_directory(tmp, *out, a.overwrite);
      } catch (...) {
        io::remove_all(tmp);
        throw;
      }
    }
    return result;
  } catch (const Error& e) {
    if (e.kind() == ErrorKind::usage) throw py::value_error(python_names(e.what()));
    throw;
  }
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
the trained nested groups are group_boundaries.

Create one with Sae.load(dir) or msae.train(...).)doc";

constexpr const char* kLoadDoc = R"doc(Load an SAE directory: sae_weights.safetensors (W_enc, W_dec, b_enc, b_dec and optionally
threshold) with optional cfg.json and msae.json, as written by `msae train`, msae.train or
Sae.save, or by SAELens for a JumpReLU SAE with one global threshold.

Raises RuntimeError when the directory is missing or malformed.)doc";

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

constexpr const char* kTrainDoc = R"doc(Train an SAE, as `msae train` does (docs/cli.md; the defaults are the CLI's for --data).

data: one of
    - a C-contiguous float32 numpy array (N, d), read in place (np.load(..., mmap_mode="r")
      works): each epoch visits every row once, in a fresh permutation drawn from seed, or in
      row order with shuffle=False (batch i = rows [i*batch, (i+1)*batch) modulo N), exactly as
      `msae train --data` samples a .npy file;
    - a path (str or os.PathLike): a .npy / .safetensors / raw file, a directory of shards or a
      glob, memory-mapped and read as `msae train --data` reads it (dtype, tensor, d_in as
      --dtype, --tensor, --d-in; docs/data.md);
    - any iterable of C-contiguous float32 arrays (n, d) (n may vary): rows are taken in order and
      cut into batches of `batch` rows; training stops after `steps` steps or when the iterator is
      exhausted (the rows of an incomplete last batch are not used). shuffle does not apply.
out: None, or a directory to write like `msae train --out` (SAELens layout, msae.json,
    metrics.jsonl). Raises FileExistsError when it exists, unless overwrite=True.
arch: "matryoshka" | "batchtopk" | "topk".
d_sae: latents D (default 8 * d, or the width of init).
group_sizes: Matryoshka group sizes summing to D (default D/16, D/16, D/8, D/4, D/2).
k: mean active latents per row.  batch: rows per step.
steps / tokens: optimizer steps, or rows (steps = ceil(tokens / batch)); give at most one.
    Default: one epoch of an array or file; until the end of an iterator.
shuffle_buffer: None (automatic, as the CLI), 0 (full permutation per epoch) or a streaming
    shuffle buffer of this many rows (--shuffle-buffer).
on_nonfinite: "error" or "skip" rows with NaN/Inf (--on-nonfinite).
normalize: "none" or "expected-norm" (--normalize; not for an iterator): training sees rows
    scaled so their mean norm is sqrt(d); the returned SAE has the scale folded into its weights,
    so encode/decode/forward take and return raw activations.
lr: Adam learning rate.  seed: initialization and shuffling.
init: start from an SAE directory (a path) or an msae.Sae.
dead_after_batches, aux_k, aux_coef: dead latents and the AuxK loss.
max_grad_norm: global gradient-norm clip.  encoder_bias: add and train b_enc.
threads: msae threads for this call (0: the current setting, all cores unless
    msae.set_num_threads was called).
engine: "sparse" (fast, default) or "reference" (the dense oracle).
progress: None, or a callable progress(step, stats) called every log_every steps and after
    the last step. stats is a dict of the step just taken: loss, l_rec, l_aux, mse_prefix (one
    per group), l0, n_dead, fvu, threshold, grad_norm, tokens, seconds, tokens_per_s, steps
    (planned; None for an iterator without steps). An exception raised by progress stops
    training and propagates (nothing is written to out); so does Ctrl-C.
log_every: steps between progress calls and metrics.jsonl lines (default steps / 100, or 100
    for an iterator without steps).

Returns the trained Sae. The same data, options, seed and thread count give bit-identical weights,
and the same weights as `msae train` on the same data as a .npy file.)doc";

}  // namespace
}  // namespace msae::python

constexpr const char* kFeatureStreamDoc = R"doc(A ground-truth activation stream: a feature model preset of `msae synth-bench`
(docs/synth-bench.md) and its sampler.

FeatureStream(preset, seed=0, stream_seed=None)
    preset: "synth-lite", "synth-16k", "tree" or "absorption"; seed: the feature model's seed;
    stream_seed: the stream's seed. The default, 2 * seed + 1, is the stream `msae synth-bench
    --seeds seed` trains on, so a model trained here on sample() sees the same rows.

Row i depends only on (preset, seed, stream_seed, i), whatever the thread count or the batch sizes.
truth holds the answer key: directions (N, d) float32 unit rows, bias (d,), parent (N,) int32 (-1 for
none), depth (N,), cond_prob and marginal (N,) float64, expected_l0.)doc";

constexpr const char* kSampleDoc = R"doc(The next `rows` rows of the stream, as a C-contiguous float32 array (rows, d).

With with_features=True, returns (x, fired_offsets, fired_ids): which features fired in each row, as
CSR (fired_ids[fired_offsets[r]:fired_offsets[r + 1]] ascending, int64 offsets, int32 ids).)doc";

PYBIND11_MODULE(msae, m) {
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
      .def_property_readonly("arch", [](const Sae& s) { return std::string(ms::arch_name(s.cfg.arch)); },
                             "Training architecture: matryoshka, batchtopk or topk.")
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
        return ms::cat("msae.Sae(arch='", ms::arch_name(s.cfg.arch), "', d_in=", s.params.d, ", d_sae=", s.params.D,
                       ", k=", s.cfg.k, ", group_boundaries=", json(s.cfg.boundaries()).dump(), ")");
      });

  m.def(
      "train",
      [](py::handle data, py::handle out, const std::string& arch, std::optional<int64_t> d_sae,
         std::optional<std::vector<int64_t>> group_sizes, int64_t k, int64_t batch, std::optional<int64_t> steps,
         std::optional<int64_t> tokens, double lr, uint64_t seed, py::object init, bool shuffle,
         std::optional<int64_t> shuffle_buffer, const std::string& on_nonfinite, const std::string& normalize,
         const std::string& dtype, const std::string& tensor, int64_t d_in, int64_t dead_after_batches, int64_t aux_k, double aux_coef, double max_grad_norm, bool encoder_bias,
         int threads, py::object progress, std::optional<int64_t> log_every, const std::string& engine,
         bool overwrite) {
        TrainArgs a;
        a.arch = arch;
        a.d_sae = d_sae;
        a.group_sizes = std::move(group_sizes);
        a.k = k;
        a.batch = batch;
        a.steps = steps;
        a.tokens = tokens;
        a.lr = lr;
        a.seed = seed;
        a.init = std::move(init);
        a.shuffle = shuffle;
        a.shuffle_buffer = shuffle_buffer;
        a.on_nonfinite = on_nonfinite;
        a.normalize = normalize;
        a.dtype = dtype;
        a.tensor = tensor;
        a.d_in = d_in;
        a.dead_after_batches = dead_after_batches;
        a.aux_k = aux_k;
        a.aux_coef = aux_coef;
        a.max_grad_norm = max_grad_norm;
        a.encoder_bias = encoder_bias;
        a.threads = threads;
        a.progress = std::move(progress);
        a.log_every = log_every;
        a.engine = engine;
        a.overwrite = overwrite;
        return train_sae(data, out, std::move(a));
      },
      py::arg("data"), py::arg("out") = py::none(), py::kw_only(), py::arg("arch") = "matryoshka",
      py::arg("d_sae") = py::none(), py::arg("group_sizes") = py::none(), py::arg("k") = 32,
      py::arg("batch") = 4096, py::arg("steps") = py::none(), py::arg("tokens") = py::none(),
      py::arg("lr") = 3e-4, py::arg("seed") = 0, py::arg("init") = py::none(), py::arg("shuffle") = true,
      py::arg("shuffle_buffer") = py::none(), py::arg("on_nonfinite") = "error", py::arg("normalize") = "none",
      py::arg("dtype") = "", py::arg("tensor") = "", py::arg("d_in") = 0, py::arg("dead_after_batches") = 20, py::arg("aux_k") = 512, py::arg("aux_coef") = 1.0 / 32.0,
      py::arg("max_grad_norm") = 1e5, py::arg("encoder_bias") = false, py::arg("threads") = 0,
      py::arg("progress") = py::none(), py::arg("log_every") = py::none(), py::arg("engine") = "sparse",
      py::arg("overwrite") = false, kTrainDoc);

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
