// File-system helpers: whole-file text IO, atomic writes (tmp + rename), directory commits.
// Also defines the io module's private low-level file helpers (namespace detail, declared again at the
// top of npy.cpp and safetensors.cpp: they are internal to io, so they stay out of the public header).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <system_error>
#include <utility>

#include "msae/io.h"

namespace stdfs = std::filesystem;

namespace msae::io {
namespace detail {

// Opens `path` read-only and returns the descriptor; `size` receives its length in bytes.
// Rejects missing files, directories and other non-regular files with a message naming the path.
int open_read(const std::string& path, int64_t& size) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) runtime_error(path, ": no such file (hint: check the path and the working directory)");
    runtime_error(path, ": cannot open for reading: ", std::strerror(err));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    runtime_error(path, ": cannot stat: ", std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    runtime_error(path, ": expected a regular file, found ",
                  S_ISDIR(st.st_mode) ? "a directory" : "a special file");
  }
  size = static_cast<int64_t>(st.st_size);
  return fd;
}

void close_fd(int fd) noexcept {
  if (fd >= 0) ::close(fd);
}

// Reads exactly n bytes at `offset`. pread keeps concurrent readers of one fd independent.
void pread_exact(int fd, int64_t offset, void* dst, int64_t n, const std::string& path) {
  auto* out = static_cast<unsigned char*>(dst);
  while (n > 0) {
    const ssize_t got = ::pread(fd, out, static_cast<size_t>(n), static_cast<off_t>(offset));
    if (got < 0) {
      if (errno == EINTR) continue;
      runtime_error(path, ": read failed at byte ", offset, ": ", std::strerror(errno));
    }
    // Only possible if the file shrank after we checked its size.
    if (got == 0) runtime_error(path, ": unexpected end of file at byte ", offset, " (was it truncated while reading?)");
    out += got;
    offset += got;
    n -= got;
  }
}

namespace {
void write_all(int fd, const void* src, size_t n, const std::string& tmp) {
  const auto* in = static_cast<const unsigned char*>(src);
  while (n > 0) {
    const ssize_t put = ::write(fd, in, n);
    if (put < 0) {
      if (errno == EINTR) continue;
      runtime_error(tmp, ": write failed: ", std::strerror(errno), " (hint: is the disk full?)");
    }
    in += put;
    n -= static_cast<size_t>(put);
  }
}
}  // namespace

// Writes the concatenation of `chunks` to path + ".tmp", fsyncs, then renames over `path`, so a crash or
// a failed write never leaves a half-written `path` (DESIGN.md: bad input never corrupts an output).
void write_file_atomic(const std::string& path, const std::vector<std::pair<const void*, size_t>>& chunks) {
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    runtime_error(path, ": cannot create ", tmp, ": ", std::strerror(errno),
                  " (hint: check that the directory exists and is writable)");
  }
  try {
    for (const auto& [data, bytes] : chunks) write_all(fd, data, bytes, tmp);
    if (::fsync(fd) != 0) runtime_error(tmp, ": fsync failed: ", std::strerror(errno));
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
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    runtime_error(path, ": cannot rename ", tmp, " into place: ", std::strerror(err));
  }
}

}  // namespace detail

std::string read_text_file(const std::string& path) {
  int64_t size = 0;
  const int fd = detail::open_read(path, size);
  std::string text(static_cast<size_t>(size), '\0');
  try {
    detail::pread_exact(fd, 0, text.data(), size, path);
  } catch (...) {
    detail::close_fd(fd);
    throw;
  }
  detail::close_fd(fd);
  return text;
}

void write_text_file_atomic(const std::string& path, const std::string& text) {
  detail::write_file_atomic(path, {{text.data(), text.size()}});
}

bool path_exists(const std::string& path) {
  std::error_code ec;
  // symlink_status: a dangling symlink still occupies the name, so it "exists" for our purposes.
  return stdfs::exists(stdfs::symlink_status(path, ec));
}

bool is_directory(const std::string& path) {
  std::error_code ec;
  return stdfs::is_directory(path, ec);
}

namespace {
// "out/" and "out" name the same directory; sibling names (out.old) need the form without the slash.
stdfs::path without_trailing_slash(const std::string& path) {
  stdfs::path p(path);
  while (!p.has_filename() && p.has_parent_path() && p != p.root_path()) p = p.parent_path();
  return p;
}

void rename_or_throw(const stdfs::path& from, const stdfs::path& to) {
  std::error_code ec;
  stdfs::rename(from, to, ec);
  if (ec) runtime_error(to.string(), ": cannot rename ", from.string(), " to it: ", ec.message());
}
}  // namespace

void rename_path(const std::string& from, const std::string& to) { rename_or_throw(from, to); }

void commit_directory(const std::string& tmp_dir, const std::string& final_dir, bool overwrite) {
  MSAE_ASSERT(is_directory(tmp_dir), "commit_directory: ", tmp_dir, " is not a directory");
  const stdfs::path target = without_trailing_slash(final_dir);
  if (!path_exists(target.string())) {
    rename_or_throw(tmp_dir, target);
    return;
  }
  if (!overwrite) usage_error("output directory ", final_dir, " exists; pass --overwrite to replace it");
  // Move the old output aside before putting the new one in place, so that if the second rename fails
  // the old output can be restored instead of both being lost.
  stdfs::path aside = target;
  aside += ".old";
  remove_all(aside.string());
  rename_or_throw(target, aside);
  std::error_code ec;
  stdfs::rename(tmp_dir, target, ec);
  if (ec) {
    std::error_code ignored;
    stdfs::rename(aside, target, ignored);
    runtime_error(final_dir, ": cannot rename ", tmp_dir, " to it: ", ec.message());
  }
  remove_all(aside.string());
}

void remove_all(const std::string& path) {
  std::error_code ec;
  stdfs::remove_all(path, ec);
  if (ec) runtime_error(path, ": cannot remove: ", ec.message());
}

void create_directories(const std::string& path) {
  std::error_code ec;
  stdfs::create_directories(path, ec);
  // create_directories reports no error when the path exists as a non-directory, so check that too.
  if (ec || !is_directory(path)) {
    runtime_error(path, ": cannot create directory: ", ec ? ec.message() : "a file with that name exists");
  }
}

}  // namespace msae::io
