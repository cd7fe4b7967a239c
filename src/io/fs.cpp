// File-system helpers: whole-file text reads, existence tests, removal and directory creation, and the
// io module's private read helpers (io/detail.h). The durable writes are in durable.cpp.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <system_error>
#include <utility>

#include "msae/io.h"
#include "io/detail.h"

namespace stdfs = std::filesystem;

namespace msae::io {
namespace detail {

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

bool path_exists(const std::string& path) {
  std::error_code ec;
  // symlink_status: a dangling symlink still occupies the name, so it "exists" for our purposes.
  return stdfs::exists(stdfs::symlink_status(path, ec));
}

bool is_directory(const std::string& path) {
  std::error_code ec;
  return stdfs::is_directory(path, ec);
}

std::string without_trailing_slash(const std::string& path) {
  stdfs::path p(path);
  while (!p.has_filename() && p.has_parent_path() && p != p.root_path()) p = p.parent_path();
  return p.string();
}

void remove_all(const std::string& path) {
  if (const int e = failpoint("remove", path)) runtime_error(path, ": cannot remove: ", std::strerror(e));
  std::error_code ec;
  stdfs::remove_all(path, ec);
  if (ec) runtime_error(path, ": cannot remove: ", ec.message());
}

void create_directories(const std::string& path) {
  if (const int e = failpoint("mkdir", path)) runtime_error(path, ": cannot create directory: ", std::strerror(e));
  std::error_code ec;
  stdfs::create_directories(path, ec);
  // create_directories reports no error when the path exists as a non-directory, so check that too.
  if (ec || !is_directory(path)) {
    runtime_error(path, ": cannot create directory: ", ec ? ec.message() : "a file with that name exists");
  }
}

}  // namespace msae::io
