// An SAE directory's reconstruction spliced into a hook (lm.h): its input scale, its prefixes, and the
// splice itself.
#include "msae/lm.h"
#include "msae/model.h"

namespace msae::lm {

float sae_input_scale(const saedir::SaeDirectory& sae) {
  const auto& j = sae.msae_json;
  if (j.is_object() && j.contains("data_normalization") && j["data_normalization"].is_object()) {
    const auto& n = j["data_normalization"];
    if (n.contains("scale") && n["scale"].is_number()) {
      const double s = n["scale"].get<double>();
      if (!(s > 0) || !(s <= 3.0e38))
        runtime_error("msae.json: data_normalization.scale must be a positive float, found ", s);
      return static_cast<float>(s);
    }
  }
  return 1.0f;
}

void splice_sae(const saedir::SaeDirectory& sae, float scale, int64_t limit, float* x, int64_t R,
                const std::vector<uint8_t>* keep_row, SpliceStats* stats) {
  const int64_t d = sae.params.d;
  MSAE_ASSERT(!keep_row || static_cast<int64_t>(keep_row->size()) >= R);
  std::vector<int64_t> rows;
  rows.reserve(static_cast<size_t>(R));
  for (int64_t r = 0; r < R; ++r)
    if (!keep_row || (*keep_row)[static_cast<size_t>(r)]) rows.push_back(r);
  const int64_t B = static_cast<int64_t>(rows.size());
  if (B == 0) return;
  Tensor in({B, d}), out({B, d});
  for (int64_t i = 0; i < B; ++i)
    for (int64_t j = 0; j < d; ++j) in.data[i * d + j] = x[rows[i] * d + j] * scale;
  const kernels::SparseCodes z = encode_inference(sae.sae, sae.params, in.ptr(), B, limit);
  msae::decode(sae.params, z, out.ptr());
  for (int64_t i = 0; i < B; ++i) {
    float* xr = x + rows[i] * d;
    for (int64_t j = 0; j < d; ++j) {
      const float rec = out.data[i * d + j] / scale;
      if (stats) stats->sse += static_cast<double>(rec - xr[j]) * (rec - xr[j]);
      xr[j] = rec;
    }
  }
  if (stats) {
    stats->l0 += static_cast<double>(z.nnz());
    stats->rows += B;
  }
}

std::vector<int64_t> sae_prefixes(const saedir::SaeDirectory& sae) { return sae.sae.boundaries(); }

}  // namespace msae::lm
