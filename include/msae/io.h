// msae io: the project's own .npy and .safetensors readers/writers, and atomic file-system helpers.
// io depends on core only; it knows nothing of SAEs (export passes a list of named tensors).
//
// Every reader of outside bytes validates magic, header syntax, dtype, shape and file size, and throws
// msae::Error (runtime, exit 1) naming the file, what was expected and what was found. Readers never
// crash or read out of bounds on malformed input.
#pragma once

#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "msae/core.h"

namespace msae::io {

// The size and CRC-32C of a file's bytes, recorded beside what msae writes (checkpoints, SAE directories)
// and verified when it is read back. JSON: {"bytes": N, "crc32c": "8 hex digits"}.
struct FileDigest {
  int64_t bytes = 0;
  uint32_t crc32c = 0;
  std::string crc_hex() const;
  nlohmann::json to_json() const;
  static FileDigest from_json(const nlohmann::json& j, const std::string& what);
};

enum class DType { f32, f16, bf16 };
const char* dtype_name(DType t);  // "float32" / "float16" / "bfloat16"
int dtype_size(DType t);          // bytes per element

// IEEE half / bfloat16 <-> float32 conversions (round-to-nearest-even on the way down).
float half_to_float(uint16_t h);
uint16_t float_to_half(float f);
float bf16_to_float(uint16_t b);
uint16_t float_to_bf16(float f);
// Convert n elements of dtype `t` at `src` (little-endian) into float32 `dst`.
void convert_to_f32(DType t, const void* src, float* dst, int64_t n);

// ---------------------------------------------------------------------------------------------
// .npy (format versions 1.0, 2.0 and 3.0). Supported element types: '<f4' (float32) and '<f2'
// (float16); '<u2' is accepted as bf16 only when the caller asks for it (bf16_as_u2 = true).
// Fortran order is rejected with a clear message.
// ---------------------------------------------------------------------------------------------
struct NpyHeader {
  DType dtype = DType::f32;
  std::vector<int64_t> shape;
  int64_t data_offset = 0;  // byte offset of the first element
};

// Parse and validate the header of `path`; also checks that the file holds all the data the shape says.
NpyHeader read_npy_header(const std::string& path, bool bf16_as_u2 = false);

// Read a whole .npy into a float32 tensor (converting f16/bf16).
Tensor read_npy(const std::string& path, bool bf16_as_u2 = false);

// Write a float32 array as .npy version 1.0 ('<f4', C order), atomically (write_text_file_atomic's protocol).
void write_npy(const std::string& path, const float* data, const std::vector<int64_t>& shape);
inline void write_npy(const std::string& path, const Tensor& t) { write_npy(path, t.ptr(), t.shape); }

// Integer .npy arrays: '<i4' (int32) or '<i8' (int64), C order, any shape (e.g. the token index that
// `msae harvest` writes, docs/formats.md). Values are widened to int64; itemsize says how they were stored.
// The float readers above reject integer dtypes (an integer file in a data directory is an error there).
struct NpyIntArray {
  std::vector<int64_t> shape;
  std::vector<int64_t> values;  // numel(shape), C order
  int itemsize = 8;             // 4 for '<i4', 8 for '<i8'
};
NpyIntArray read_npy_int(const std::string& path);
// Write an integer array as .npy version 1.0 ('<i4' or '<i8', C order), atomically like write_npy.
void write_npy_int(const std::string& path, const int32_t* data, const std::vector<int64_t>& shape);
void write_npy_int(const std::string& path, const int64_t* data, const std::vector<int64_t>& shape);
// The bytes before the data of a version-1.0 .npy of this descr ('<f4', '<f2', '<i4', '<i8', ...) and shape,
// as numpy.save writes them (64-byte aligned), for writers that stream the data after it.
std::string npy_header_bytes(const std::string& descr, const std::vector<int64_t>& shape);

// Streams a C-order .npy (version 1.0) of a shape known up front: the header (npy_header_bytes) when
// constructed, then the caller's raw little-endian bytes, in order. descr: "<f4", "<f2", "<u2", "<i4" or
// "<i8". Written to `path` itself, not atomically (write into a temporary directory and commit it);
// close() fsyncs. Every write passes through the io failpoints.
// Writing more bytes than the shape holds, or closing after fewer, is the caller's bug (MSAE_ASSERT);
// I/O failures are runtime errors naming the file. Not thread-safe.
class NpyWriter {
 public:
  NpyWriter(const std::string& path, const std::string& descr, const std::vector<int64_t>& shape);
  ~NpyWriter();  // closes the file without the checks of close() (an abandoned write)
  NpyWriter(const NpyWriter&) = delete;
  NpyWriter& operator=(const NpyWriter&) = delete;
  void write(const void* data, size_t bytes);
  void close();  // checks that exactly the promised bytes were written, then closes the file
  int64_t bytes_expected() const { return expected_; }  // of data, after the header
  int64_t bytes_written() const { return written_; }

 private:
  std::string path_;
  int fd_ = -1;
  int64_t expected_ = 0, written_ = 0;
};

// A read-only memory map of a 2-D .npy (N, d): rows are converted to float32 on request.
// Thread-safe for concurrent reads.
class NpyRows {
 public:
  explicit NpyRows(const std::string& path, bool bf16_as_u2 = false);
  ~NpyRows();
  NpyRows(const NpyRows&) = delete;
  NpyRows& operator=(const NpyRows&) = delete;

  int64_t rows() const { return rows_; }
  int64_t cols() const { return cols_; }
  DType dtype() const { return header_.dtype; }
  const std::string& path() const { return path_; }
  // Copy rows [begin, begin + count) into dst (count, cols) as float32.
  void read_rows(int64_t begin, int64_t count, float* dst) const;
  // Copy the rows with the given indices (each in [0, rows)) into dst (n, cols) as float32.
  void gather_rows(const int64_t* indices, int64_t n, float* dst) const;

 private:
  std::string path_;
  NpyHeader header_;
  int64_t rows_ = 0, cols_ = 0;
  const unsigned char* map_ = nullptr;
  size_t map_size_ = 0;
};

// ---------------------------------------------------------------------------------------------
// .safetensors: 8-byte little-endian header length, JSON header {name: {dtype, shape, data_offsets}},
// optional "__metadata__" (string -> string), then the data. Reader accepts F32, F16, BF16 and
// converts to float32; writer writes F32. Validated: header length vs file size, JSON syntax, dtype,
// shape product vs byte range, ranges in bounds and non-overlapping.
// ---------------------------------------------------------------------------------------------
struct SafetensorsFile {
  std::map<std::string, Tensor> tensors;            // converted to float32
  std::map<std::string, DType> stored_dtypes;       // dtype as stored in the file
  std::map<std::string, std::string> metadata;      // "__metadata__"
};

SafetensorsFile read_safetensors(const std::string& path);

// Header-only view of a .safetensors file, for memory-mapped readers (data shards): every tensor's
// name, stored dtype, shape and the absolute byte range of its data in the file. Validated exactly as
// read_safetensors validates (header, dtypes, shapes vs byte ranges, bounds, overlaps); no data is read.
struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::f32;
  std::vector<int64_t> shape;
  int64_t offset = 0;  // absolute byte offset of the first element in the file
  int64_t nbytes = 0;
};
std::vector<SafetensorsEntry> read_safetensors_index(const std::string& path);

// A tensor to write: name, shape and a pointer to numel(shape) float32 values (not owned).
struct TensorRef {
  std::string name;
  std::vector<int64_t> shape;
  const float* data = nullptr;
};

// Writes F32 tensors in the order given (data 8-byte aligned as the format requires), with metadata,
// atomically (write_text_file_atomic's protocol). Returns the digest of the file written.
FileDigest write_safetensors(const std::string& path, const std::vector<TensorRef>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// A JSON value (from a file header or config) rendered for an error message without recursion, so a
// maliciously deep value cannot overflow the stack: scalars and containers of scalars in full (cut at
// 200 characters), nested containers as e.g. "an array of 3 elements (nested)".
std::string json_excerpt(const nlohmann::json& value);

// Parses the text of a JSON file with nesting capped at max_depth while parsing (copying or printing a
// value recurses, so a pathologically deep file must never get past the parser). Throws msae::Error
// (runtime) naming `path` when the text is not valid JSON or is nested deeper.
nlohmann::json parse_json_file_text(const std::string& text, const std::string& path, int max_depth = 64);

// Checked reads of numbers from JSON that came from a file. nlohmann's get<> converts whatever is there:
// a float read as an integer is truncated, and one outside the integer's (or a double outside float's)
// range is undefined behaviour. These accept only the stated kind and range and otherwise throw
// msae::Error (runtime) "WHAT must be ..., found VALUE"; `what` names the file and the key.
int64_t json_int(const nlohmann::json& v, const std::string& what, int64_t lo = INT64_MIN, int64_t hi = INT64_MAX);
uint64_t json_uint64(const nlohmann::json& v, const std::string& what);
std::vector<int64_t> json_int_vector(const nlohmann::json& v, const std::string& what, int64_t lo = INT64_MIN,
                                     int64_t hi = INT64_MAX);
std::vector<uint64_t> json_uint64_vector(const nlohmann::json& v, const std::string& what);
std::vector<double> json_double_vector(const nlohmann::json& v, const std::string& what);
double json_double(const nlohmann::json& v, const std::string& what);  // any finite number
float json_float(const nlohmann::json& v, const std::string& what);    // a finite number within float's range

// ---------------------------------------------------------------------------------------------
// File-system helpers.
// ---------------------------------------------------------------------------------------------
std::string read_text_file(const std::string& path);  // throws msae::Error if unreadable
bool path_exists(const std::string& path);
bool is_directory(const std::string& path);
std::string without_trailing_slash(const std::string& path);  // "out/" -> "out" (siblings: "out" + ".tmp-...")
void remove_all(const std::string& path);
void create_directories(const std::string& path);

// ---------------------------------------------------------------------------------------------
// Durability (docs/reliability.md). Every operation below that changes the disk (open for writing,
// write, fsync, rename, mkdir, remove) passes through a failpoint; with the environment variable
// MSAE_FAILPOINT=N:ACTION the Nth such call of the process kills it (ACTION kill: SIGKILL, no clean-up)
// or fails with EIO or ENOSPC, and MSAE_FAILPOINT_LOG=FILE appends "N OP PATH" for every call. The
// failpoint walk of test_reliability uses both.
// ---------------------------------------------------------------------------------------------
// Returns 0 (go on) or the errno the operation must fail with; kills the process at a kill point.
int failpoint(const char* op, const std::string& path);
// For tests in one process (with fork): sets the failpoint as MSAE_FAILPOINT would (at 0: none; action
// "kill", "EIO" or "ENOSPC") and restarts the count; failpoint_calls() is the count since then.
void set_failpoint(int64_t at, const std::string& action);
int64_t failpoint_calls();

// CRC-32C (Castagnoli), incremental: crc32c(b, nb, crc32c(a, na)) == crc32c(a + b). The SSE4.2
// instruction where the CPU has it; crc32c_portable is the table version (the same values).
uint32_t crc32c(const void* data, size_t n, uint32_t crc = 0);
uint32_t crc32c_portable(const void* data, size_t n, uint32_t crc = 0);

FileDigest digest_file(const std::string& path);
// Throws msae::Error (runtime) naming the file and `recorded_in` when the file's digest differs.
void verify_file(const std::string& path, const FileDigest& expected, const std::string& recorded_in);

// `path` + ".tmp-PID-N": unique within and across processes; clean_leftovers knows the pattern.
std::string temp_name(const std::string& path);
// Writes the whole file under a temporary name beside `path`, fsyncs it, renames it over `path` and
// fsyncs the directory: `path` holds its old content or all of the new, whatever fails and whenever.
FileDigest write_text_file_atomic(const std::string& path, const std::string& text);
void fsync_directory(const std::string& dir);
void sync_tree(const std::string& dir);  // fsync every file and directory under `dir`, and `dir`
// Renames a file or directory; throws msae::Error (runtime) naming both paths on failure.
void rename_path(const std::string& from, const std::string& to);
// Exchanges two existing paths atomically (renameat2 RENAME_EXCHANGE); false when the file system cannot.
bool exchange_paths(const std::string& a, const std::string& b);
// Makes the fully written `tmp_dir` the output `final_dir`: everything under it is fsynced first; a new
// output is one rename, a replaced one (only with `overwrite`, else a usage error) one atomic exchange,
// after which the old output is removed. Before that instant `final_dir` is the old output, untouched.
void commit_directory(const std::string& tmp_dir, const std::string& final_dir, bool overwrite);

// An exclusive lock on an output for the life of a run: flock on OUT.lock beside it, holding the
// holder's pid, host, what it does and since when. A second msae on the same output is refused with
// that line. Released (and the lock file removed) by the destructor; a killed holder's lock is free.
class OutputLock {
 public:
  OutputLock() = default;
  OutputLock(OutputLock&& o) noexcept;
  OutputLock& operator=(OutputLock&& o) noexcept;
  OutputLock(const OutputLock&) = delete;
  OutputLock& operator=(const OutputLock&) = delete;
  ~OutputLock();
  void release() noexcept;
  bool held() const { return fd_ >= 0; }

 private:
  friend OutputLock lock_output(const std::string& out, const std::string& what);
  std::string path_;
  int fd_ = -1;
};
std::string lock_path(const std::string& out);  // OUT.lock
OutputLock lock_output(const std::string& out, const std::string& what);

// What a crashed run left beside or in an output: msae's temporary names (OUT.tmp-*, OUT/*.tmp-*,
// OUT/checkpoints/step-*.tmp-*) are removed, since they are incomplete by construction; an earlier
// output that a run moved aside (OUT.replaced-*, OUT.old-*) and the state of a run that failed on its data
// (OUT.failed-*) are kept and named. Call with the lock held.
struct Leftovers {
  std::vector<std::string> removed, kept;
};
Leftovers clean_leftovers(const std::string& out);
void report_leftovers(const Leftovers& l);  // one log line for each

// An output being written: a new directory under a temporary name beside `out`, made `out` by commit()
// (commit_directory's protocol) or removed by the destructor if it never was (an error, an exception).
class PendingOutput {
 public:
  explicit PendingOutput(const std::string& out);
  ~PendingOutput();
  PendingOutput(const PendingOutput&) = delete;
  PendingOutput& operator=(const PendingOutput&) = delete;
  const std::string& dir() const { return dir_; }
  void commit(bool overwrite);

 private:
  std::string out_, dir_;
  bool committed_ = false;
};

// An append-only text file (metrics.jsonl): every append reaches the file before it returns (a crash
// loses no line already appended, at most tears the last); sync() fsyncs; close() fsyncs and closes.
class AppendFile {
 public:
  AppendFile() = default;
  AppendFile(const std::string& path, bool truncate) { open(path, truncate); }
  ~AppendFile();
  void open(const std::string& path, bool truncate);
  AppendFile(const AppendFile&) = delete;
  AppendFile& operator=(const AppendFile&) = delete;
  void append(const std::string& text);
  void sync();
  void close();
  bool is_open() const { return fd_ >= 0; }

 private:
  std::string path_;
  int fd_ = -1;
};

}  // namespace msae::io
