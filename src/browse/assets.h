// The feature browser's static files (src/browse/assets/), compiled into msae by cmake/embed_assets.cmake
// so that `msae browse` needs nothing beside the binary.
#pragma once

#include <cstddef>
#include <vector>

namespace msae::browse {

struct Asset {
  const char* name;  // path in the site ("page.html", the pages' template; "assets/browse.js", ...)
  const unsigned char* data;
  size_t size;
};
const std::vector<Asset>& assets();

}  // namespace msae::browse
