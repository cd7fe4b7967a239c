// .safetensors reader (F32/F16/BF16 -> float32) and writer (F32).
// Format: u64 little-endian header length N, N bytes of JSON {name: {"dtype", "shape", "data_offsets":
// [begin, end]}, "__metadata__": {str: str}}, then the data; offsets are relative to byte 8 + N.
#include <algorithm>
#include <cstring>
#include <set>
#include <utility>

#include <nlohmann/json.hpp>

#include "msae/io.h"
#include "io/detail.h"

namespace msae::io {

namespace {

using nlohmann::json;

// The reference implementation (huggingface/safetensors) refuses headers over 100 MB; so do we, so a
// corrupt length never turns into a huge allocation.
constexpr uint64_t kMaxHeaderLen = 100'000'000;

[[noreturn]] void st_fail(const std::string& path, const std::string& what, const std::string& hint = "") {
  if (hint.empty()) runtime_error(path, ": ", what);
  runtime_error(path, ": ", what, " (hint: ", hint, ")");
}

struct FdCloser {
  int fd;
  ~FdCloser() { detail::close_fd(fd); }
};

// One tensor's header entry, validated against the data section.
struct Entry {
  std::string name;
  DType dtype = DType::f32;
  std::vector<int64_t> shape;
  int64_t begin = 0, end = 0;  // byte range relative to the data section
};

DType parse_dtype(const std::string& name, const json& j, const std::string& path) {
  if (!j.is_string()) st_fail(path, cat("tensor '", name, "': \"dtype\" must be a string, found ", json_excerpt(j)));
  const std::string s = j.get<std::string>();
  if (s == "F32") return DType::f32;
  if (s == "F16") return DType::f16;
  if (s == "BF16") return DType::bf16;
  st_fail(path, cat("tensor '", name, "' has unsupported dtype ", s, "; expected F32, F16 or BF16"),
          "convert the tensor to float32 (or float16/bfloat16) before saving");
}

// A JSON array of non-negative integers (shape dims, offsets). `what` names the field for messages.
std::vector<int64_t> parse_uints(const std::string& name, const json& j, const char* what, const std::string& path) {
  if (!j.is_array()) st_fail(path, cat("tensor '", name, "': \"", what, "\" must be an array, found ", json_excerpt(j)));
  std::vector<int64_t> out;
  for (const json& v : j) {
    // is_number_unsigned: JSON integers >= 0 (negative ones parse as signed, floats as float).
    if (!v.is_number_unsigned() || v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
      st_fail(path, cat("tensor '", name, "': \"", what, "\" must hold non-negative integers below 2^63, found ", json_excerpt(j)));
    }
    out.push_back(static_cast<int64_t>(v.get<uint64_t>()));
  }
  return out;
}

Entry parse_entry(const std::string& name, const json& j, int64_t data_size, const std::string& path) {
  if (!j.is_object()) {
    st_fail(path, cat("tensor '", name, "': expected an object {dtype, shape, data_offsets}, found ", json_excerpt(j)));
  }
  for (const char* key : {"dtype", "shape", "data_offsets"}) {
    if (!j.contains(key)) st_fail(path, cat("tensor '", name, "': missing \"", key, "\""));
  }
  Entry e;
  e.name = name;
  e.dtype = parse_dtype(name, j["dtype"], path);
  e.shape = parse_uints(name, j["shape"], "shape", path);
  const std::vector<int64_t> offsets = parse_uints(name, j["data_offsets"], "data_offsets", path);
  if (offsets.size() != 2) {
    st_fail(path, cat("tensor '", name, "': \"data_offsets\" must be [begin, end], found ", json_excerpt(j["data_offsets"])));
  }
  e.begin = offsets[0];
  e.end = offsets[1];
  if (e.begin > e.end || e.end > data_size) {
    st_fail(path, cat("tensor '", name, "': data_offsets [", e.begin, ", ", e.end, "] out of bounds; the data section has ",
                      data_size, " bytes"),
            "the file is truncated or corrupt");
  }
  int64_t nbytes = dtype_size(e.dtype);
  for (int64_t dim : e.shape) {
    if (__builtin_mul_overflow(nbytes, dim, &nbytes)) {
      st_fail(path, cat("tensor '", name, "': shape ", shape_str(e.shape), " has more elements than fit in 64 bits"));
    }
  }
  if (nbytes != e.end - e.begin) {
    st_fail(path, cat("tensor '", name, "': shape ", shape_str(e.shape), " of ", dtype_name(e.dtype), " needs ", nbytes,
                      " bytes, but data_offsets [", e.begin, ", ", e.end, "] span ", e.end - e.begin),
            "the file is corrupt");
  }
  return e;
}

std::map<std::string, std::string> parse_metadata(const json& j, const std::string& path) {
  if (!j.is_object()) st_fail(path, cat("\"__metadata__\" must be an object of strings, found ", json_excerpt(j)));
  std::map<std::string, std::string> out;
  for (const auto& [key, value] : j.items()) {
    if (!value.is_string()) {
      st_fail(path, cat("\"__metadata__\" value for '", key, "' must be a string, found ", json_excerpt(value)),
              "the safetensors format allows only string metadata; encode other values as JSON text");
    }
    out[key] = value.get<std::string>();
  }
  return out;
}

// Non-empty byte ranges must not share bytes (empty tensors occupy none).
void check_no_overlap(std::vector<const Entry*> entries, const std::string& path) {
  std::erase_if(entries, [](const Entry* e) { return e->begin == e->end; });
  std::sort(entries.begin(), entries.end(), [](const Entry* a, const Entry* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < entries.size(); ++i) {
    const Entry& prev = *entries[i - 1];
    const Entry& cur = *entries[i];
    if (cur.begin < prev.end) {
      st_fail(path, cat("tensors '", prev.name, "' [", prev.begin, ", ", prev.end, ") and '", cur.name, "' [",
                        cur.begin, ", ", cur.end, ") overlap"),
              "the file is corrupt");
    }
  }
}

// Reads the length prefix and the JSON header; returns the header and sets data_start.
json read_header(int fd, int64_t size, const std::string& path, int64_t& data_start) {
  if (size < 8) {
    st_fail(path, cat("too short for a .safetensors file: ", size, " bytes, expected at least 8 (the header length)"),
            "was the file written completely?");
  }
  unsigned char len_bytes[8];
  detail::pread_exact(fd, 0, len_bytes, 8, path);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | len_bytes[i];
  if (header_len > kMaxHeaderLen) {
    st_fail(path, cat("header length ", header_len, " exceeds the ", kMaxHeaderLen, "-byte limit"),
            "this is not a .safetensors file, or it is corrupt");
  }
  if (header_len > static_cast<uint64_t>(size - 8)) {
    st_fail(path, cat("header length ", header_len, " runs past the end of the file (", size, " bytes)"),
            "the file is truncated or not a .safetensors file");
  }
  std::string text(static_cast<size_t>(header_len), '\0');
  detail::pread_exact(fd, 8, text.data(), static_cast<int64_t>(header_len), path);
  data_start = 8 + static_cast<int64_t>(header_len);
  // nlohmann keeps the last of duplicate keys silently; a repeated tensor name means a corrupt header,
  // so watch the top-level keys (depth 1) as they are parsed.
  std::set<std::string> names;
  std::string duplicate;
  bool has_duplicate = false;
  // A valid header nests 3 levels ({name: {"shape": [...]}}); anything much deeper is refused while parsing,
  // before a recursive operation on the value (copy, dump) could exhaust the stack.
  constexpr int kMaxDepth = 32;
  auto watch_keys = [&](int depth, json::parse_event_t event, json& parsed) {
    if ((event == json::parse_event_t::object_start || event == json::parse_event_t::array_start) && depth > kMaxDepth)
      st_fail(path, cat("header is nested deeper than ", kMaxDepth, " levels"), "the file is corrupt or not a .safetensors file");
    if (event == json::parse_event_t::key && depth == 1 && !names.insert(parsed.get<std::string>()).second) {
      duplicate = parsed.get<std::string>();
      has_duplicate = true;
    }
    return true;
  };
  json header;
  try {
    header = json::parse(text, watch_keys);
  } catch (const json::exception& e) {
    st_fail(path, cat("header is not valid JSON: ", e.what()), "the file is corrupt or not a .safetensors file");
  }
  if (has_duplicate) st_fail(path, cat("header lists '", duplicate, "' more than once"), "the file is corrupt");
  if (!header.is_object()) st_fail(path, cat("header must be a JSON object, found ", header.type_name()));
  return header;
}

// Reads one tensor's bytes and converts them to float32.
Tensor read_tensor(int fd, int64_t data_start, const Entry& e, const std::string& path) {
  Tensor t(e.shape);
  const int64_t n = t.numel();
  if (e.dtype == DType::f32) {
    detail::pread_exact(fd, data_start + e.begin, t.ptr(), n * 4, path);
  } else {
    std::vector<uint16_t> raw(static_cast<size_t>(n));
    detail::pread_exact(fd, data_start + e.begin, raw.data(), n * 2, path);
    convert_to_f32(e.dtype, raw.data(), t.ptr(), n);
  }
  return t;
}

}  // namespace

json parse_json_file_text(const std::string& text, const std::string& path, int max_depth) {
  auto cap_depth = [&](int depth, json::parse_event_t event, json&) {
    if ((event == json::parse_event_t::object_start || event == json::parse_event_t::array_start) && depth > max_depth)
      runtime_error(path, ": JSON nested deeper than ", max_depth, " levels");
    return true;
  };
  try {
    return json::parse(text, cap_depth);
  } catch (const json::exception& e) {
    runtime_error(path, ": not valid JSON (", e.what(), ")");
  }
}

std::string json_excerpt(const json& v) {
  constexpr size_t kMax = 200;
  if (v.is_array() || v.is_object()) {
    for (const json& child : v)  // direct children only: no recursion
      if (child.is_array() || child.is_object())
        return cat(v.is_array() ? "an array of " : "an object with ", v.size(), v.is_array() ? " elements" : " keys",
                   " (nested)");
  }
  std::string text = v.dump();  // scalars, or one level of scalars: bounded depth
  if (text.size() > kMax) text = text.substr(0, kMax) + "...";
  return text;
}

SafetensorsFile read_safetensors(const std::string& path) {
  int64_t size = 0;
  FdCloser file{detail::open_read(path, size)};
  int64_t data_start = 0;
  const json header = read_header(file.fd, size, path, data_start);
  const int64_t data_size = size - data_start;

  SafetensorsFile out;
  std::vector<Entry> entries;
  for (const auto& [name, value] : header.items()) {
    if (name == "__metadata__") {
      out.metadata = parse_metadata(value, path);
    } else {
      entries.push_back(parse_entry(name, value, data_size, path));
    }
  }
  std::vector<const Entry*> views;
  for (const Entry& e : entries) views.push_back(&e);
  check_no_overlap(views, path);

  // Everything is validated before any tensor data is read.
  for (const Entry& e : entries) {
    out.tensors[e.name] = read_tensor(file.fd, data_start, e, path);
    out.stored_dtypes[e.name] = e.dtype;
  }
  return out;
}

std::vector<SafetensorsEntry> read_safetensors_index(const std::string& path) {
  int64_t size = 0;
  FdCloser file{detail::open_read(path, size)};
  int64_t data_start = 0;
  const json header = read_header(file.fd, size, path, data_start);
  const int64_t data_size = size - data_start;
  std::vector<Entry> entries;
  for (const auto& [name, value] : header.items()) {
    if (name == "__metadata__") {
      parse_metadata(value, path);
    } else {
      entries.push_back(parse_entry(name, value, data_size, path));
    }
  }
  std::vector<const Entry*> views;
  for (const Entry& e : entries) views.push_back(&e);
  check_no_overlap(views, path);
  std::vector<SafetensorsEntry> out;
  for (const Entry& e : entries) out.push_back({e.name, e.dtype, e.shape, data_start + e.begin, e.end - e.begin});
  return out;
}

FileDigest write_safetensors(const std::string& path, const std::vector<TensorRef>& tensors,
                             const std::map<std::string, std::string>& metadata) {
  // ordered_json keeps the header in the order given, matching the data order.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<std::pair<const void*, size_t>> chunks(1);  // [0] is the header, filled in below
  int64_t offset = 0;
  for (const TensorRef& t : tensors) {
    MSAE_ASSERT(!t.name.empty() && t.name != "__metadata__", "write_safetensors: bad tensor name '", t.name, "'");
    MSAE_ASSERT(!header.contains(t.name), "write_safetensors: duplicate tensor name '", t.name, "'");
    for (int64_t dim : t.shape) MSAE_ASSERT(dim >= 0, "write_safetensors: '", t.name, "' has shape ", shape_str(t.shape));
    const int64_t bytes = numel(t.shape) * 4;
    MSAE_ASSERT(bytes == 0 || t.data != nullptr, "write_safetensors: '", t.name, "' has no data");
    header[t.name] = {{"dtype", "F32"}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    chunks.emplace_back(t.data, static_cast<size_t>(bytes));
    offset += bytes;
  }
  // Pad the JSON with spaces (allowed by the format) so the data starts 8-byte aligned.
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string head(8, '\0');
  for (int i = 0; i < 8; ++i) head[i] = static_cast<char>((static_cast<uint64_t>(text.size()) >> (8 * i)) & 0xff);
  head += text;
  chunks[0] = {head.data(), head.size()};
  return detail::write_file_atomic(path, chunks);
}

}  // namespace msae::io
