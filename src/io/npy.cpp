// .npy reader/writer, memory-mapped row access, and the float16/bfloat16 conversions.
// Format reference: numpy/lib/format.py. A file is: magic "\x93NUMPY", major, minor, a little-endian
// header length (u16 for 1.0, u32 for 2.0/3.0), a Python-literal dict header, then raw C-order data.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <map>
#include <utility>

#include "core/half.h"
#include "msae/io.h"
#include "io/detail.h"

// Every reader assumes the host is little-endian, like the files it reads.
static_assert(std::endian::native == std::endian::little, "msae io assumes a little-endian host");

namespace msae::io {

// ---------------------------------------------------------------------------------------------
// dtypes and conversions
// ---------------------------------------------------------------------------------------------
const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "float32";
    case DType::f16: return "float16";
    case DType::bf16: return "bfloat16";
  }
  MSAE_ASSERT(false, "bad DType");
  return "";
}

int dtype_size(DType t) { return t == DType::f32 ? 4 : 2; }

float half_to_float(uint16_t h) { return msae::detail::half_to_float(h); }
uint16_t float_to_half(float f) { return msae::detail::float_to_half(f); }

float bf16_to_float(uint16_t b) { return std::bit_cast<float>(static_cast<uint32_t>(b) << 16); }

uint16_t float_to_bf16(float f) {
  const uint32_t bits = std::bit_cast<uint32_t>(f);
  if ((bits & 0x7fffffffu) > 0x7f800000u) {
    // NaN whose payload may live only in the low 16 bits: set the quiet bit so it stays a NaN.
    return static_cast<uint16_t>((bits >> 16) | 0x0040u);
  }
  // Round to nearest even on the low 16 bits; carries propagate into the exponent (and up to inf).
  return static_cast<uint16_t>(msae::detail::shift_round_even(bits, 16));
}

void convert_to_f32(DType t, const void* src, float* dst, int64_t n) {
  MSAE_ASSERT(n >= 0);
  if (n == 0) return;
  if (t == DType::f32) {
    std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
    return;
  }
  // memcpy each element: src may be unaligned (odd header lengths, safetensors offsets).
  const auto* in = static_cast<const unsigned char*>(src);
  const bool half = t == DType::f16;
  for (int64_t i = 0; i < n; ++i) {
    uint16_t v;
    std::memcpy(&v, in + 2 * i, 2);
    dst[i] = half ? half_to_float(v) : bf16_to_float(v);
  }
}

// ---------------------------------------------------------------------------------------------
// header parsing
// ---------------------------------------------------------------------------------------------
namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr int64_t kMagicLen = 6;
// numpy itself refuses headers over 10 kB by default; 1 MiB leaves room for any real file while
// keeping a corrupt length field from making us allocate gigabytes.
constexpr int64_t kMaxHeaderLen = int64_t{1} << 20;

[[noreturn]] void npy_fail(const std::string& path, const std::string& what, const std::string& hint = "") {
  if (hint.empty()) runtime_error(path, ": ", what);
  runtime_error(path, ": ", what, " (hint: ", hint, ")");
}

// Bytes as a readable Python-like literal, for messages about garbage input.
std::string printable(const unsigned char* p, size_t n) {
  static const char* digits = "0123456789abcdef";
  std::string out = "'";
  for (size_t i = 0; i < n; ++i) {
    const unsigned char c = p[i];
    if (c >= 0x20 && c < 0x7f && c != '\\' && c != '\'') {
      out += static_cast<char>(c);
    } else {
      out += "\\x";
      out += digits[c >> 4];
      out += digits[c & 15];
    }
  }
  return out + "'";
}

// A value in the header dict: the only literal kinds a valid header uses.
struct PyValue {
  enum class Kind { string, boolean, tuple } kind = Kind::string;
  std::string str;
  bool boolean = false;
  std::vector<int64_t> tuple;
};

// Recursive-descent parser for the header: a Python dict literal of string keys whose values are
// strings, True/False or tuples of integers. Whitespace anywhere and trailing commas are accepted.
class HeaderParser {
 public:
  HeaderParser(const std::string& text, const std::string& path) : text_(text), path_(path) {}

  std::map<std::string, PyValue> parse_dict() {
    std::map<std::string, PyValue> dict;
    skip_ws();
    expect('{', "'{' opening the header dict");
    skip_ws();
    while (!consume('}')) {
      if (peek() != '\'' && peek() != '"') fail("a quoted key or '}'");
      const size_t key_pos = pos_;
      std::string key = parse_string();
      skip_ws();
      expect(':', "':' after the key");
      skip_ws();
      PyValue value = parse_value();
      if (!dict.emplace(key, std::move(value)).second) {
        pos_ = key_pos;
        fail_msg(cat("duplicate key '", key, "'"));
      }
      skip_ws();
      if (consume(',')) {
        skip_ws();
      } else if (peek() != '}') {
        fail("',' or '}'");
      }
    }
    skip_ws();
    if (pos_ != text_.size()) fail("the end of the header after '}'");
    return dict;
  }

 private:
  char peek() const { return pos_ < text_.size() ? text_[pos_] : '\0'; }
  bool at_end() const { return pos_ >= text_.size(); }
  void skip_ws() {
    while (!at_end() && (text_[pos_] == ' ' || text_[pos_] == '\t' || text_[pos_] == '\n' || text_[pos_] == '\r'))
      ++pos_;
  }
  bool consume(char c) {
    if (peek() != c || at_end()) return false;
    ++pos_;
    return true;
  }
  void expect(char c, const char* what) {
    if (!consume(c)) fail(what);
  }

  [[noreturn]] void fail_msg(const std::string& problem) {
    std::string shown = text_.substr(0, 200);
    while (!shown.empty() && (shown.back() == ' ' || shown.back() == '\n')) shown.pop_back();
    npy_fail(path_,
             cat("malformed .npy header at character ", pos_, ": ", problem, "; header is ",
                 printable(reinterpret_cast<const unsigned char*>(shown.data()), shown.size()),
                 text_.size() > 200 ? "..." : ""),
             "expected a dict like {'descr': '<f4', 'fortran_order': False, 'shape': (N, d)}; "
             "rewrite the file with numpy.save");
  }
  [[noreturn]] void fail(const std::string& expected) {
    fail_msg(cat("expected ", expected, ", found ",
                 at_end() ? std::string("end of header")
                          : printable(reinterpret_cast<const unsigned char*>(text_.data() + pos_), 1)));
  }

  // A Python string literal in ' or " quotes. Backslash takes the next character literally: enough
  // for any header numpy writes, and it cannot run past the end.
  std::string parse_string() {
    const char quote = text_[pos_++];
    std::string out;
    while (!at_end() && text_[pos_] != quote) {
      if (text_[pos_] == '\\' && pos_ + 1 < text_.size()) ++pos_;
      out += text_[pos_++];
    }
    if (!consume(quote)) fail("a closing quote");
    return out;
  }

  // Decimal integer, possibly negative (rejected later with a clear message), possibly with Python 2's
  // long suffix 'L'. Overflow of int64 is an error.
  int64_t parse_int() {
    const bool negative = consume('-');
    if (!(peek() >= '0' && peek() <= '9')) fail("an integer");
    int64_t v = 0;
    while (peek() >= '0' && peek() <= '9') {
      const int digit = text_[pos_] - '0';
      if (v > (INT64_MAX - digit) / 10) fail_msg("integer in shape does not fit in 64 bits");
      v = v * 10 + digit;
      ++pos_;
    }
    if (peek() == 'L' || peek() == 'l') ++pos_;
    return negative ? -v : v;
  }

  // "()", "(N,)", "(N, d)", "(N, d,)"; "(N)" is accepted too (Python reads it as an int, but the
  // intent is unambiguous).
  std::vector<int64_t> parse_tuple() {
    std::vector<int64_t> out;
    ++pos_;  // '('
    skip_ws();
    while (!consume(')')) {
      out.push_back(parse_int());
      skip_ws();
      if (consume(',')) {
        skip_ws();
      } else if (peek() != ')') {
        fail("',' or ')' in the shape tuple");
      }
    }
    return out;
  }

  PyValue parse_value() {
    PyValue v;
    const char c = peek();
    if (c == '\'' || c == '"') {
      v.kind = PyValue::Kind::string;
      v.str = parse_string();
    } else if (c == '(') {
      v.kind = PyValue::Kind::tuple;
      v.tuple = parse_tuple();
    } else if (text_.compare(pos_, 4, "True") == 0) {
      v.kind = PyValue::Kind::boolean;
      v.boolean = true;
      pos_ += 4;
    } else if (text_.compare(pos_, 5, "False") == 0) {
      v.kind = PyValue::Kind::boolean;
      pos_ += 5;
    } else {
      fail("a string, True/False or a tuple (structured dtypes and other values are not supported)");
    }
    return v;
  }

  const std::string& text_;
  const std::string& path_;
  size_t pos_ = 0;
};

DType parse_descr(const std::string& descr, bool bf16_as_u2, const std::string& path) {
  if (descr == "<f4") return DType::f32;

  if (descr == "<f2") return DType::f16;
  if (descr == "<u2") {
    if (bf16_as_u2) return DType::bf16;
    npy_fail(path, "dtype '<u2' (uint16) is not a float type",
             "if the array holds raw bfloat16 bits, enable the bf16-as-uint16 option; otherwise convert "
             "with a.astype(np.float32)");
  }
  const std::string expected = bf16_as_u2 ? "'<f4' (float32), '<f2' (float16) or '<u2' (bfloat16 bits)"
                                          : "'<f4' (float32) or '<f2' (float16)";
  if (!descr.empty() && descr[0] == '>') {
    npy_fail(path, cat("big-endian dtype '", descr, "' is not supported; expected ", expected),
             "convert with a.astype(a.dtype.newbyteorder('<'))");
  }
  npy_fail(path, cat("unsupported dtype '", descr, "'; expected ", expected),
           "convert with a.astype(np.float32) before saving");
}

const PyValue& require_key(const std::map<std::string, PyValue>& dict, const char* key, PyValue::Kind kind,
                           const char* kind_name, const std::string& path) {
  auto it = dict.find(key);
  if (it == dict.end()) {
    npy_fail(path, cat("malformed .npy header: key '", key, "' is missing"), "rewrite the file with numpy.save");
  }
  if (it->second.kind != kind) {
    npy_fail(path, cat("malformed .npy header: '", key, "' must be ", kind_name),
             "rewrite the file with numpy.save");
  }
  return it->second;
}

// Bytes per element of an integer descr ('<i4' or '<i8'), else a runtime error naming the file.
int int_itemsize(const std::string& descr, const std::string& path) {
  if (descr == "<i4") return 4;
  if (descr == "<i8") return 8;
  if (!descr.empty() && descr[0] == '>') {
    npy_fail(path, cat("big-endian dtype '", descr, "' is not supported; expected '<i4' (int32) or '<i8' (int64)"),
             "convert with a.astype('<i8')");
  }
  npy_fail(path, cat("dtype '", descr, "' is not supported here; expected an integer array, '<i4' (int32) or '<i8' (int64)"),
           "convert with a.astype(np.int64) before saving");
}

// Turns the parsed dict into a header, checking keys, types, dtype, layout and shape. With int_descr,
// the array must be an integer one ('<i4' / '<i8'): its descr goes there and h.dtype stays f32 (unused).
NpyHeader interpret_dict(const std::map<std::string, PyValue>& dict, bool bf16_as_u2, const std::string& path,
                         std::string* int_descr = nullptr) {
  for (const auto& entry : dict) {
    if (entry.first != "descr" && entry.first != "fortran_order" && entry.first != "shape") {
      npy_fail(path, cat("malformed .npy header: unexpected key '", entry.first,
                         "'; expected exactly 'descr', 'fortran_order' and 'shape'"),
               "rewrite the file with numpy.save");
    }
  }
  NpyHeader h;
  const auto& descr = require_key(dict, "descr", PyValue::Kind::string, "a dtype string such as '<f4'", path);
  const auto& fortran = require_key(dict, "fortran_order", PyValue::Kind::boolean, "True or False", path);
  const auto& shape = require_key(dict, "shape", PyValue::Kind::tuple, "a tuple such as (N, d)", path);
  if (int_descr) {
    int_itemsize(descr.str, path);
    *int_descr = descr.str;
  } else {
    h.dtype = parse_descr(descr.str, bf16_as_u2, path);
  }
  if (fortran.boolean) {
    npy_fail(path, "array is stored in Fortran (column-major) order; expected C order (fortran_order: False)",
             "save np.ascontiguousarray(a) instead");
  }
  for (int64_t dim : shape.tuple) {
    if (dim < 0) npy_fail(path, cat("negative dimension ", dim, " in shape"), "the file is corrupt");
  }
  h.shape = shape.tuple;
  return h;
}

// numel * itemsize, or -1 when it does not fit in int64 (a corrupt shape).
int64_t checked_nbytes(const std::vector<int64_t>& shape, int itemsize) {
  int64_t n = itemsize;
  for (int64_t dim : shape) {
    if (__builtin_mul_overflow(n, dim, &n)) return -1;
  }
  return n;
}

// Little-endian unsigned integer from `bytes` bytes.
uint32_t read_le(const unsigned char* p, int bytes) {
  uint32_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// Parses the header of the already opened file (fd, size bytes). int_descr: as in interpret_dict.
NpyHeader parse_header(int fd, int64_t size, const std::string& path, bool bf16_as_u2,
                       std::string* int_descr = nullptr) {
  if (size == 0) npy_fail(path, "empty file (0 bytes); expected a .npy file", "was it written completely?");
  unsigned char prefix[12] = {};
  const int64_t have = std::min<int64_t>(size, 12);
  detail::pread_exact(fd, 0, prefix, have, path);
  if (have < kMagicLen || std::memcmp(prefix, kMagic, kMagicLen) != 0) {
    npy_fail(path,
             cat("not a .npy file: expected magic '\\x93NUMPY', found ",
                 printable(prefix, static_cast<size_t>(std::min<int64_t>(have, kMagicLen)))),
             "pass a file written by numpy.save");
  }
  if (have < 8) npy_fail(path, cat("truncated .npy file: ", size, " bytes, too short to hold the format version"));
  const int major = prefix[6], minor = prefix[7];
  if ((major < 1 || major > 3) || minor != 0) {
    npy_fail(path, cat("unsupported .npy format version ", major, ".", minor, "; expected 1.0, 2.0 or 3.0"),
             "the file may be corrupt or from a newer numpy");
  }
  const int len_bytes = major == 1 ? 2 : 4;
  const int64_t prefix_len = 8 + len_bytes;
  if (size < prefix_len) {
    npy_fail(path, cat("truncated .npy header: file has ", size, " bytes, the header length field ends at byte ",
                       prefix_len),
             "was the file written completely?");
  }
  const int64_t header_len = read_le(prefix + 8, len_bytes);
  if (header_len > kMaxHeaderLen) {
    npy_fail(path, cat("header length ", header_len, " exceeds the ", kMaxHeaderLen, "-byte limit"),
             "the file is corrupt");
  }
  const int64_t data_offset = prefix_len + header_len;
  if (data_offset > size) {
    npy_fail(path, cat("truncated .npy header: header length ", header_len, " runs to byte ", data_offset,
                       " but the file has only ", size, " bytes"),
             "was the file written completely?");
  }
  std::string text(static_cast<size_t>(header_len), '\0');
  detail::pread_exact(fd, prefix_len, text.data(), header_len, path);
  NpyHeader h = interpret_dict(HeaderParser(text, path).parse_dict(), bf16_as_u2, path, int_descr);
  h.data_offset = data_offset;

  const int itemsize = int_descr ? int_itemsize(*int_descr, path) : dtype_size(h.dtype);
  const std::string type_name = int_descr ? (itemsize == 4 ? "int32" : "int64") : dtype_name(h.dtype);
  const int64_t nbytes = checked_nbytes(h.shape, itemsize);
  if (nbytes < 0) {
    npy_fail(path, cat("shape ", shape_str(h.shape), " has more elements than fit in 64 bits"), "the file is corrupt");
  }
  if (size - data_offset < nbytes) {
    npy_fail(path, cat("truncated data: shape ", shape_str(h.shape), " of ", type_name, " needs ", nbytes,
                       " bytes after the ", data_offset, "-byte header, found ", size - data_offset),
             "was the file written completely?");
  }
  return h;
}

// Closes a descriptor on scope exit (readers throw on bad input).
struct FdCloser {
  int fd;
  ~FdCloser() { detail::close_fd(fd); }
};

// Reads n elements of type Raw from byte `offset` in chunks, handing each chunk to
// widen(chunk, first_index, count): conversion without a second full-size copy of the data.
template <typename Raw, typename Widen>
void read_in_chunks(int fd, int64_t offset, int64_t n, const std::string& path, Widen widen) {
  constexpr int64_t kChunk = 1 << 16;
  std::vector<Raw> raw(static_cast<size_t>(std::min(n, kChunk)));
  for (int64_t done = 0; done < n; done += kChunk) {
    const int64_t m = std::min(kChunk, n - done);
    detail::pread_exact(fd, offset + static_cast<int64_t>(sizeof(Raw)) * done, raw.data(),
                        static_cast<int64_t>(sizeof(Raw)) * m, path);
    widen(raw.data(), done, m);
  }
}

}  // namespace

NpyHeader read_npy_header(const std::string& path, bool bf16_as_u2) {
  int64_t size = 0;
  FdCloser file{detail::open_read(path, size)};
  return parse_header(file.fd, size, path, bf16_as_u2);
}

Tensor read_npy(const std::string& path, bool bf16_as_u2) {
  int64_t size = 0;
  FdCloser file{detail::open_read(path, size)};
  const NpyHeader h = parse_header(file.fd, size, path, bf16_as_u2);
  // The size check above bounds numel by the file size, so this allocation is not attacker-sized.
  Tensor t(h.shape);
  const int64_t n = t.numel();
  if (h.dtype == DType::f32) {
    detail::pread_exact(file.fd, h.data_offset, t.ptr(), n * 4, path);
    return t;
  }
  read_in_chunks<uint16_t>(file.fd, h.data_offset, n, path, [&](const uint16_t* raw, int64_t done, int64_t m) {
    convert_to_f32(h.dtype, raw, t.ptr() + done, m);
  });
  return t;
}

NpyIntArray read_npy_int(const std::string& path) {
  int64_t size = 0;
  FdCloser file{detail::open_read(path, size)};
  std::string descr;
  const NpyHeader h = parse_header(file.fd, size, path, false, &descr);
  NpyIntArray a;
  a.shape = h.shape;
  a.itemsize = descr == "<i4" ? 4 : 8;
  const int64_t n = numel(h.shape);  // bounded by the file size (checked in parse_header)
  a.values.resize(static_cast<size_t>(n));
  if (a.itemsize == 8) {
    detail::pread_exact(file.fd, h.data_offset, a.values.data(), n * 8, path);
    return a;
  }
  read_in_chunks<int32_t>(file.fd, h.data_offset, n, path, [&](const int32_t* raw, int64_t done, int64_t m) {
    std::copy(raw, raw + m, a.values.begin() + done);
  });
  return a;
}

std::string npy_header_bytes(const std::string& descr, const std::vector<int64_t>& shape) {
  std::string dims;
  for (int64_t dim : shape) {
    MSAE_ASSERT(dim >= 0, "npy header: negative dimension in ", shape_str(shape));
    dims += std::to_string(dim) + ", ";
  }
  if (shape.size() > 1) dims.resize(dims.size() - 2);  // "(N,)" keeps its comma; "(N, d)" does not.
  if (shape.size() == 1) dims.pop_back();
  // Same text and 64-byte data alignment as numpy.save, so numpy can also memory-map what we write.
  std::string header = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': (" + dims + "), }";
  const size_t unpadded = 6 + 2 + 2 + header.size() + 1;  // magic, version, u16 length, text, '\n'
  header.append((64 - unpadded % 64) % 64, ' ');
  header += '\n';
  MSAE_ASSERT(header.size() <= 0xffff, "npy header too long for format 1.0");
  std::string prefix(kMagic, kMagicLen);
  prefix += '\x01';
  prefix += '\x00';
  prefix += static_cast<char>(header.size() & 0xff);
  prefix += static_cast<char>(header.size() >> 8);
  prefix += header;
  return prefix;
}

void write_npy_int(const std::string& path, const int32_t* data, const std::vector<int64_t>& shape) {
  const int64_t n = numel(shape);
  MSAE_ASSERT(n == 0 || data != nullptr);
  const std::string prefix = npy_header_bytes("<i4", shape);
  detail::write_file_atomic(path, {{prefix.data(), prefix.size()}, {data, static_cast<size_t>(n) * 4}});
}

void write_npy_int(const std::string& path, const int64_t* data, const std::vector<int64_t>& shape) {
  const int64_t n = numel(shape);
  MSAE_ASSERT(n == 0 || data != nullptr);
  const std::string prefix = npy_header_bytes("<i8", shape);
  detail::write_file_atomic(path, {{prefix.data(), prefix.size()}, {data, static_cast<size_t>(n) * 8}});
}

void write_npy(const std::string& path, const float* data, const std::vector<int64_t>& shape) {
  const int64_t n = numel(shape);
  MSAE_ASSERT(n == 0 || data != nullptr);
  const std::string prefix = npy_header_bytes("<f4", shape);
  detail::write_file_atomic(path, {{prefix.data(), prefix.size()}, {data, static_cast<size_t>(n) * sizeof(float)}});
}

// ---------------------------------------------------------------------------------------------
// NpyRows
// ---------------------------------------------------------------------------------------------
NpyRows::NpyRows(const std::string& path, bool bf16_as_u2) : path_(path) {
  int64_t size = 0;
  FdCloser file{detail::open_read(path, size)};
  header_ = parse_header(file.fd, size, path, bf16_as_u2);
  if (header_.shape.size() != 2) {
    npy_fail(path, cat("expected a 2-D array (N, d) of activations, found shape ", shape_str(header_.shape)),
             "reshape to (tokens, d) before saving, e.g. a.reshape(-1, a.shape[-1])");
  }
  rows_ = header_.shape[0];
  cols_ = header_.shape[1];
  // Map the whole file (offsets stay file-relative); the mapping outlives the descriptor.
  map_size_ = static_cast<size_t>(size);
  void* p = ::mmap(nullptr, map_size_, PROT_READ, MAP_PRIVATE, file.fd, 0);
  if (p == MAP_FAILED) runtime_error(path, ": cannot memory-map ", size, " bytes: ", std::strerror(errno));
  map_ = static_cast<const unsigned char*>(p);
}

NpyRows::~NpyRows() {
  if (map_) ::munmap(const_cast<unsigned char*>(map_), map_size_);
}

void NpyRows::read_rows(int64_t begin, int64_t count, float* dst) const {
  MSAE_ASSERT(begin >= 0 && count >= 0 && begin <= rows_ - count, "read_rows [", begin, ", ", begin + count,
              ") out of bounds for ", rows_, " rows of ", path_);
  const int64_t row_bytes = cols_ * dtype_size(header_.dtype);
  convert_to_f32(header_.dtype, map_ + header_.data_offset + begin * row_bytes, dst, count * cols_);
}

void NpyRows::gather_rows(const int64_t* indices, int64_t n, float* dst) const {
  MSAE_ASSERT(n >= 0);
  const int64_t row_bytes = cols_ * dtype_size(header_.dtype);
  const unsigned char* base = map_ + header_.data_offset;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t r = indices[i];
    MSAE_ASSERT(r >= 0 && r < rows_, "gather_rows index ", r, " out of bounds for ", rows_, " rows of ", path_);
    convert_to_f32(header_.dtype, base + r * row_bytes, dst + i * cols_, cols_);
  }
}

// ---------------------------------------------------------------------------------------------
// NpyWriter
// ---------------------------------------------------------------------------------------------
namespace {
int64_t npy_item_size(const std::string& descr) {
  if (descr == "<f4" || descr == "<i4") return 4;
  if (descr == "<f2" || descr == "<u2") return 2;
  MSAE_ASSERT(descr == "<i8", "npy writer: unsupported descr '", descr, "'");
  return 8;
}
}  // namespace

NpyWriter::NpyWriter(const std::string& path, const std::string& descr, const std::vector<int64_t>& shape)
    : path_(path) {
  expected_ = npy_item_size(descr) * numel(shape);
  const std::string prefix = npy_header_bytes(descr, shape);
  fd_ = detail::open_new(path, O_WRONLY | O_CREAT | O_TRUNC);
  if (fd_ < 0) runtime_error(path, ": cannot create (", std::strerror(errno), ")");
  try {
    detail::write_all(fd_, prefix.data(), prefix.size(), path);
  } catch (...) {
    ::close(fd_);
    fd_ = -1;
    throw;
  }
}

NpyWriter::~NpyWriter() {
  if (fd_ >= 0) ::close(fd_);
}

void NpyWriter::write(const void* data, size_t bytes) {
  MSAE_ASSERT(fd_ >= 0, "npy writer: write after close of ", path_);
  MSAE_ASSERT(static_cast<int64_t>(bytes) <= expected_ - written_, "npy writer: ", path_, ": writing ", bytes,
              " bytes after ", written_, " of the ", expected_, " promised");
  if (bytes) detail::write_all(fd_, data, bytes, path_);
  written_ += static_cast<int64_t>(bytes);
}

void NpyWriter::close() {
  MSAE_ASSERT(fd_ >= 0, "npy writer: ", path_, " closed twice");
  MSAE_ASSERT(written_ == expected_, "npy writer: ", path_, ": wrote ", written_, " bytes, promised ", expected_);
  const int fd = fd_;
  fd_ = -1;
  try {
    detail::fsync_fd(fd, path_);
  } catch (...) {
    ::close(fd);
    throw;
  }
  if (::close(fd) != 0) runtime_error(path_, ": write failed on close: ", std::strerror(errno));
}

}  // namespace msae::io
