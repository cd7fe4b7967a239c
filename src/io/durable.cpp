// Durable writes (docs/reliability.md): the failpoint layer every disk-changing operation of io passes
// through, CRC-32C digests, fsync of files and directories, atomic file writes under unique temporary
// names, the directory commit (one rename, or one exchange when an output is replaced), the exclusive
// lock on an output, the finder of a crashed run's leftovers, and the append-only metrics file.
#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <mutex>
#include <nlohmann/json.hpp>

#include "msae/io.h"
#include "io/detail.h"

namespace stdfs = std::filesystem;

namespace msae::io {

// ---------------------------------------------------------------------------------------------
// Failpoints
// ---------------------------------------------------------------------------------------------
namespace {

struct FailpointSetting {
  int64_t at = 0;         // 1-based index of the call that fails; 0: none
  int action = 0;         // 0: kill the process (SIGKILL), else the errno the operation fails with
  int log_fd = -1;        // MSAE_FAILPOINT_LOG: one line per call
  bool counting = false;  // set_failpoint was called: count the calls
};

int parse_failpoint_action(const std::string& action) {
  if (action == "kill") return 0;
  if (action == "EIO") return EIO;
  if (action == "ENOSPC") return ENOSPC;
  runtime_error("MSAE_FAILPOINT: unknown action '", action, "' (kill, EIO or ENOSPC)");
}

FailpointSetting& failpoint_setting() {
  static FailpointSetting s = [] {
    FailpointSetting r;
    if (const char* spec = std::getenv("MSAE_FAILPOINT"); spec && *spec) {
      char* end = nullptr;
      r.at = std::strtoll(spec, &end, 10);
      const std::string action = end && *end == ':' ? end + 1 : "";
      if (r.at <= 0 || action.empty())
        runtime_error("MSAE_FAILPOINT must be N:kill, N:EIO or N:ENOSPC (N >= 1), found '", spec, "'");
      r.action = parse_failpoint_action(action);
    }
    if (const char* log = std::getenv("MSAE_FAILPOINT_LOG"); log && *log)
      r.log_fd = ::open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    return r;
  }();
  return s;
}

std::atomic<int64_t> g_failpoint_calls{0};

}  // namespace

void set_failpoint(int64_t at, const std::string& action) {
  FailpointSetting& s = failpoint_setting();
  s.at = at;
  s.action = parse_failpoint_action(action);
  s.counting = true;
  g_failpoint_calls = 0;
}

int64_t failpoint_calls() { return g_failpoint_calls.load(); }

int failpoint(const char* op, const std::string& path) {
  const FailpointSetting& s = failpoint_setting();
  if (s.at == 0 && s.log_fd < 0 && !s.counting) return 0;
  const int64_t n = g_failpoint_calls.fetch_add(1) + 1;
  if (s.log_fd >= 0) {
    const std::string line = cat(n, " ", op, " ", path, "\n");
    [[maybe_unused]] const ssize_t ignored = ::write(s.log_fd, line.data(), line.size());
  }
  if (n != s.at) return 0;
  if (s.action == 0) {
    ::kill(::getpid(), SIGKILL);
    ::pause();  // not reached
  }
  return s.action;
}

// ---------------------------------------------------------------------------------------------
// CRC-32C (Castagnoli), as iSCSI, ext4 and Btrfs use it: the SSE4.2 instruction where the CPU has it,
// else a slicing-by-8 table. Both give the same value (test_io checks them against each other).
// ---------------------------------------------------------------------------------------------
namespace {

struct Crc32cTables {
  uint32_t t[8][256];
  Crc32cTables() {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
      t[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; ++i)
      for (int s = 1; s < 8; ++s) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xff];
  }
};

uint32_t crc32c_table(const unsigned char* p, size_t n, uint32_t crc) {
  static const Crc32cTables tab;
  crc = ~crc;
  while (n >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    w ^= crc;
    crc = tab.t[7][w & 0xff] ^ tab.t[6][(w >> 8) & 0xff] ^ tab.t[5][(w >> 16) & 0xff] ^ tab.t[4][(w >> 24) & 0xff] ^
          tab.t[3][(w >> 32) & 0xff] ^ tab.t[2][(w >> 40) & 0xff] ^ tab.t[1][(w >> 48) & 0xff] ^ tab.t[0][w >> 56];
    p += 8;
    n -= 8;
  }
  while (n--) crc = (crc >> 8) ^ tab.t[0][(crc ^ *p++) & 0xff];
  return ~crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t crc32c_hw(const unsigned char* p, size_t n, uint32_t crc) {
  uint64_t c = ~crc;
  while (n >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    c = __builtin_ia32_crc32di(c, w);
    p += 8;
    n -= 8;
  }
  uint32_t c32 = static_cast<uint32_t>(c);
  while (n--) c32 = __builtin_ia32_crc32qi(c32, *p++);
  return ~c32;
}
#endif

}  // namespace

uint32_t crc32c(const void* data, size_t n, uint32_t crc) {
  const auto* p = static_cast<const unsigned char*>(data);
#if defined(__x86_64__)
  static const bool hw = __builtin_cpu_supports("sse4.2");
  if (hw) return crc32c_hw(p, n, crc);
#endif
  return crc32c_table(p, n, crc);
}

uint32_t crc32c_portable(const void* data, size_t n, uint32_t crc) {
  return crc32c_table(static_cast<const unsigned char*>(data), n, crc);
}

std::string FileDigest::crc_hex() const {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%08x", crc32c);
  return buf;
}

nlohmann::json FileDigest::to_json() const { return {{"bytes", bytes}, {"crc32c", crc_hex()}}; }

FileDigest FileDigest::from_json(const nlohmann::json& j, const std::string& what) {
  FileDigest d;
  if (!j.is_object() || !j.contains("bytes") || !j.contains("crc32c") || !j.at("crc32c").is_string())
    runtime_error(what, " must be {\"bytes\": N, \"crc32c\": \"8 hex digits\"}, found ", json_excerpt(j));
  d.bytes = json_int(j.at("bytes"), what + ".bytes", 0);
  const std::string hex = j.at("crc32c").get<std::string>();
  char* end = nullptr;
  const unsigned long v = std::strtoul(hex.c_str(), &end, 16);
  if (hex.size() != 8 || !end || *end) runtime_error(what, ".crc32c must be 8 hex digits, found '", hex, "'");
  d.crc32c = static_cast<uint32_t>(v);
  return d;
}

FileDigest digest_file(const std::string& path) {
  int64_t size = 0;
  const int fd = detail::open_read(path, size);
  FileDigest d;
  std::vector<unsigned char> buf(std::min<int64_t>(size, int64_t{8} << 20));
  try {
    int64_t at = 0;
    while (at < size) {
      const int64_t n = std::min<int64_t>(size - at, static_cast<int64_t>(buf.size()));
      detail::pread_exact(fd, at, buf.data(), n, path);
      d.crc32c = crc32c(buf.data(), static_cast<size_t>(n), d.crc32c);
      at += n;
    }
  } catch (...) {
    detail::close_fd(fd);
    throw;
  }
  detail::close_fd(fd);
  d.bytes = size;
  return d;
}

void verify_file(const std::string& path, const FileDigest& expected, const std::string& recorded_in) {
  const FileDigest got = digest_file(path);
  if (got.bytes != expected.bytes || got.crc32c != expected.crc32c)
    runtime_error(path, " does not match the digest recorded in ", recorded_in, " (", got.bytes, " bytes, CRC-32C ",
                  got.crc_hex(), "; recorded ", expected.bytes, " bytes, CRC-32C ", expected.crc_hex(),
                  "): the file was damaged or changed after it was written");
}

// ---------------------------------------------------------------------------------------------
// fsync, temporary names, atomic file writes
// ---------------------------------------------------------------------------------------------
namespace {

std::string parent_of(const std::string& path) {
  const stdfs::path p = stdfs::path(path).parent_path();
  return p.empty() ? "." : p.string();
}

std::atomic<int64_t> g_temp_counter{0};

}  // namespace

namespace detail {

void fsync_fd(int fd, const std::string& path) {
  if (const int e = failpoint("fsync", path)) {
    errno = e;
  } else if (::fsync(fd) == 0) {
    return;
  }
  runtime_error(path, ": fsync failed: ", std::strerror(errno), " (hint: is the disk full or failing?)");
}

void write_all(int fd, const void* src, size_t n, const std::string& path) {
  const auto* in = static_cast<const unsigned char*>(src);
  while (n > 0) {
    // One failpoint per call; large writes go out in pieces of at most 1 GiB (Linux writes at most ~2 GiB).
    const size_t piece = std::min<size_t>(n, size_t{1} << 30);
    ssize_t put;
    if (const int e = failpoint("write", path)) {
      errno = e;
      put = -1;
    } else {
      put = ::write(fd, in, piece);
    }
    if (put < 0) {
      if (errno == EINTR) continue;
      runtime_error(path, ": write failed: ", std::strerror(errno), " (hint: is the disk full?)");
    }
    in += put;
    n -= static_cast<size_t>(put);
  }
}

int open_new(const std::string& path, int flags) {
  if (const int e = failpoint("open", path)) {
    errno = e;
    return -1;
  }
  return ::open(path.c_str(), flags | O_CLOEXEC, 0644);
}

}  // namespace detail

namespace {
// Opens `path` read-only (extra `flags`, e.g. O_DIRECTORY) and fsyncs it.
void fsync_path(const std::string& path, int flags) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | flags);
  if (fd < 0) runtime_error(path, ": cannot open to fsync it: ", std::strerror(errno));
  try {
    detail::fsync_fd(fd, path);
  } catch (...) {
    ::close(fd);
    throw;
  }
  ::close(fd);
}
}  // namespace

void fsync_directory(const std::string& dir) { fsync_path(dir, O_DIRECTORY); }

void sync_tree(const std::string& dir) {
  std::error_code ec;
  for (auto it = stdfs::recursive_directory_iterator(dir, ec); !ec && it != stdfs::recursive_directory_iterator();
       it.increment(ec)) {
    if (it->is_directory(ec))
      fsync_path(it->path().string(), O_DIRECTORY);
    else if (it->is_regular_file(ec))
      fsync_path(it->path().string(), 0);
  }
  if (ec) runtime_error(dir, ": cannot list: ", ec.message());
  fsync_directory(dir);
}

std::string temp_name(const std::string& path) {
  return cat(without_trailing_slash(path), ".tmp-", ::getpid(), "-", g_temp_counter.fetch_add(1));
}

namespace detail {

// Writes the chunks to a new file under a unique temporary name beside `path`, fsyncs it, renames it
// over `path` and fsyncs the directory: `path` is always either its old content or the whole new one.
FileDigest write_file_atomic(const std::string& path, const std::vector<std::pair<const void*, size_t>>& chunks) {
  const std::string tmp = temp_name(path);
  const int fd = open_new(tmp, O_WRONLY | O_CREAT | O_EXCL);
  if (fd < 0)
    runtime_error(path, ": cannot create ", tmp, ": ", std::strerror(errno),
                  " (hint: check that the directory exists and is writable)");
  FileDigest digest;
  try {
    for (const auto& [data, bytes] : chunks) {
      write_all(fd, data, bytes, tmp);
      digest.crc32c = crc32c(data, bytes, digest.crc32c);
      digest.bytes += static_cast<int64_t>(bytes);
    }
    fsync_fd(fd, tmp);
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    runtime_error(tmp, ": close failed: ", std::strerror(err), " (hint: is the disk full?)");
  }
  try {
    rename_path(tmp, path);
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  fsync_directory(parent_of(path));
  return digest;
}

}  // namespace detail

FileDigest write_text_file_atomic(const std::string& path, const std::string& text) {
  return detail::write_file_atomic(path, {{text.data(), text.size()}});
}

// ---------------------------------------------------------------------------------------------
// Renames and the directory commit
// ---------------------------------------------------------------------------------------------
void rename_path(const std::string& from, const std::string& to) {
  if (const int e = failpoint("rename", to))
    runtime_error(to, ": cannot rename ", from, " to it: ", std::strerror(e));
  if (::rename(from.c_str(), to.c_str()) != 0)
    runtime_error(to, ": cannot rename ", from, " to it: ", std::strerror(errno));
}

bool exchange_paths(const std::string& a, const std::string& b) {
  if (const int e = failpoint("rename", b)) runtime_error(b, ": cannot exchange it with ", a, ": ", std::strerror(e));
  if (::renameat2(AT_FDCWD, a.c_str(), AT_FDCWD, b.c_str(), RENAME_EXCHANGE) == 0) return true;
  if (errno == EINVAL || errno == ENOSYS || errno == ENOTSUP) return false;  // the file system cannot
  runtime_error(b, ": cannot exchange it with ", a, ": ", std::strerror(errno));
}

void commit_directory(const std::string& tmp_dir, const std::string& final_dir, bool overwrite) {
  MSAE_ASSERT(is_directory(tmp_dir), "commit_directory: ", tmp_dir, " is not a directory");
  const std::string target = without_trailing_slash(final_dir);
  const std::string parent = parent_of(target);
  sync_tree(tmp_dir);  // every file and directory of the new output on disk before it takes the name
  if (!path_exists(target)) {
    rename_path(tmp_dir, target);
    fsync_directory(parent);
    return;
  }
  if (!overwrite) usage_error("output directory ", final_dir, " exists; pass --overwrite to replace it");
  // One atomic exchange: `target` is the old output until the instant it is the new one. The old one is
  // then under the temporary name and removed (a crash before that leaves it as a leftover that the
  // next run on this output removes: it was replaced as asked).
  if (exchange_paths(tmp_dir, target)) {
    fsync_directory(parent);
    remove_all(tmp_dir);
    return;
  }
  // A file system without RENAME_EXCHANGE: move the old output aside, put the new one in place, and put
  // the old one back if that fails.
  const std::string aside = cat(target, ".old-", ::getpid());
  rename_path(target, aside);
  try {
    rename_path(tmp_dir, target);
  } catch (...) {
    std::error_code ignored;
    stdfs::rename(aside, target, ignored);
    throw;
  }
  fsync_directory(parent);
  remove_all(aside);
}

// ---------------------------------------------------------------------------------------------
// The output lock and a crashed run's leftovers
// ---------------------------------------------------------------------------------------------
OutputLock::OutputLock(OutputLock&& o) noexcept : path_(std::move(o.path_)), fd_(o.fd_) { o.fd_ = -1; }

OutputLock& OutputLock::operator=(OutputLock&& o) noexcept {
  if (this != &o) {
    release();
    path_ = std::move(o.path_);
    fd_ = o.fd_;
    o.fd_ = -1;
  }
  return *this;
}

OutputLock::~OutputLock() { release(); }

void OutputLock::release() noexcept {
  if (fd_ < 0) return;
  ::unlink(path_.c_str());  // while still holding the lock (lock_output checks the inode it locked)
  ::close(fd_);
  fd_ = -1;
}

std::string lock_path(const std::string& out) { return without_trailing_slash(out) + ".lock"; }

OutputLock lock_output(const std::string& out, const std::string& what) {
  const std::string path = lock_path(out);
  const std::string parent = parent_of(without_trailing_slash(out));
  if (!is_directory(parent)) create_directories(parent);
  for (int attempt = 0; attempt < 100; ++attempt) {
    const int fd = detail::open_new(path, O_RDWR | O_CREAT);
    if (fd < 0)
      runtime_error(path, ": cannot create the lock file of ", out, ": ", std::strerror(errno),
                    " (hint: is the parent directory writable?)");
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      char buf[512] = {0};
      [[maybe_unused]] const ssize_t got = ::pread(fd, buf, sizeof buf - 1, 0);
      ::close(fd);
      if (err == EWOULDBLOCK) {
        std::string holder(buf);
        while (!holder.empty() && holder.back() == '\n') holder.pop_back();
        runtime_error(out, " is in use by another msae process (", holder.empty() ? "unknown" : holder, "; lock file ",
                      path, "): wait for it to finish, or choose another output");
      }
      runtime_error(path, ": cannot lock: ", std::strerror(err));
    }
    // The holder before us may have removed the file after we opened it: the lock is ours only if the
    // name still refers to the inode we locked.
    struct stat by_fd {}, by_name {};
    if (::fstat(fd, &by_fd) != 0 || ::stat(path.c_str(), &by_name) != 0 || by_fd.st_ino != by_name.st_ino ||
        by_fd.st_dev != by_name.st_dev) {
      ::close(fd);
      continue;
    }
    char host[256] = {0};
    ::gethostname(host, sizeof host - 1);
    const std::time_t now = std::time(nullptr);
    char when[64] = {0};
    std::strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", std::localtime(&now));
    const std::string holder = cat("pid ", ::getpid(), " on ", host, ", ", what, ", since ", when, "\n");
    if (::ftruncate(fd, 0) == 0) {
      [[maybe_unused]] const ssize_t put = ::pwrite(fd, holder.data(), holder.size(), 0);
    }
    OutputLock lock;
    lock.path_ = path;
    lock.fd_ = fd;
    return lock;
  }
  runtime_error(path, ": the lock file keeps being replaced; is something else removing it?");
}

Leftovers clean_leftovers(const std::string& out) {
  Leftovers found;
  const std::string target = without_trailing_slash(out);
  const std::string parent = parent_of(target);
  const std::string base = stdfs::path(target).filename().string();
  auto is_temp = [](const std::string& name, const std::string& stem) {
    // msae's temporary names: STEM.tmp-PID[-N] (and the .tmp of msae before 0.3)
    return name == stem + ".tmp" || name.rfind(stem + ".tmp-", 0) == 0;
  };
  std::error_code ec;
  for (const auto& e : stdfs::directory_iterator(parent, ec)) {
    const std::string name = e.path().filename().string();
    const std::string p = parent == "." ? name : cat(parent, "/", name);
    if (is_temp(name, base)) {
      remove_all(p);
      found.removed.push_back(p);
    } else if (name.rfind(base + ".replaced-", 0) == 0 || name.rfind(base + ".old-", 0) == 0 ||
               name.rfind(base + ".failed-", 0) == 0) {
      found.kept.push_back(p);
    }
  }
  // Inside the output: files and checkpoints under temporary names.
  if (is_directory(target)) {
    std::vector<std::string> dirs = {target};
    if (is_directory(target + "/checkpoints")) dirs.push_back(target + "/checkpoints");
    for (const std::string& dir : dirs)
      for (const auto& e : stdfs::directory_iterator(dir, ec)) {
        const std::string name = e.path().filename().string();
        const size_t at = name.find(".tmp");
        if (at == std::string::npos || at == 0 || !is_temp(name, name.substr(0, at))) continue;
        remove_all(e.path().string());
        found.removed.push_back(e.path().string());
      }
  }
  return found;
}

void report_leftovers(const Leftovers& l) {
  for (const std::string& p : l.removed) log_info(cat("removed ", p, ", left behind by an interrupted msae run"));
  for (const std::string& p : l.kept)
    log_warn(cat(p, " holds an earlier output that an interrupted msae run moved aside; msae leaves it to you ",
                 "(look inside, then remove it or move it back)"));
}

PendingOutput::PendingOutput(const std::string& out) : out_(without_trailing_slash(out)), dir_(temp_name(out)) {
  create_directories(dir_);
}

PendingOutput::~PendingOutput() {
  if (committed_) return;
  try {
    remove_all(dir_);
  } catch (const std::exception& e) {
    log_warn(cat("could not remove the unfinished output ", dir_, ": ", e.what()));
  }
}

void PendingOutput::commit(bool overwrite) {
  MSAE_ASSERT(!committed_, "PendingOutput: ", out_, " committed twice");
  commit_directory(dir_, out_, overwrite);
  committed_ = true;
}

// ---------------------------------------------------------------------------------------------
// AppendFile
// ---------------------------------------------------------------------------------------------
void AppendFile::open(const std::string& path, bool truncate) {
  MSAE_ASSERT(fd_ < 0, "AppendFile: ", path_, " is open");
  path_ = path;
  fd_ = detail::open_new(path, O_WRONLY | O_CREAT | O_APPEND | (truncate ? O_TRUNC : 0));
  if (fd_ < 0) runtime_error(path, ": cannot open for writing: ", std::strerror(errno));
}

AppendFile::~AppendFile() {
  if (fd_ >= 0) ::close(fd_);
}

void AppendFile::append(const std::string& text) {
  MSAE_ASSERT(fd_ >= 0, "AppendFile: append after close of ", path_);
  detail::write_all(fd_, text.data(), text.size(), path_);
}

void AppendFile::sync() {
  MSAE_ASSERT(fd_ >= 0, "AppendFile: sync after close of ", path_);
  detail::fsync_fd(fd_, path_);
}

void AppendFile::close() {
  if (fd_ < 0) return;
  try {
    sync();
  } catch (...) {
    ::close(fd_);
    fd_ = -1;
    throw;
  }
  const int rc = ::close(fd_);
  fd_ = -1;
  if (rc != 0) runtime_error(path_, ": close failed: ", std::strerror(errno));
}

}  // namespace msae::io
