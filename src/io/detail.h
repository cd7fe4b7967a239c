// The io module's private low-level file helpers (fs.cpp and durable.cpp define them). They are internal
// to io, so they stay out of the public header.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "msae/io.h"

namespace msae::io::detail {

// Opens `path` read-only and returns the descriptor; `size` receives its length in bytes. Rejects missing
// files, directories and other non-regular files with a message naming the path.
int open_read(const std::string& path, int64_t& size);
void close_fd(int fd) noexcept;
// Reads exactly n bytes at `offset`; a short read (the file shrank) is an error naming the file.
void pread_exact(int fd, int64_t offset, void* dst, int64_t n, const std::string& path);

// Creates a file (flags as for open(2), O_CLOEXEC added) through the "open" failpoint; -1 and errno on failure.
int open_new(const std::string& path, int flags);
// Writes all n bytes (through the "write" failpoint), or throws naming `path`.
void write_all(int fd, const void* src, size_t n, const std::string& path);
// fsync through the "fsync" failpoint, or throws naming `path`.
void fsync_fd(int fd, const std::string& path);
// The chunks, concatenated, as the new content of `path`: written under a unique temporary name beside it,
// fsynced, renamed over it, and the directory fsynced. Returns the digest of what was written.
FileDigest write_file_atomic(const std::string& path, const std::vector<std::pair<const void*, size_t>>& chunks);

}  // namespace msae::io::detail
