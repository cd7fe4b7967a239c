// Selection kernels. Interim: forwards to the reference implementations until the fast
// threshold-selection kernels land (issue "Fast training").
#include "msae/kernels_ref.h"

namespace msae::kernels {

void batch_topk(const float* pre, int64_t B, int64_t D, int64_t keep, SparseCodes& out) {
  ref::batch_topk(pre, B, D, keep, out);
}
void row_topk(const float* pre, int64_t B, int64_t D, int64_t k, SparseCodes& out) { ref::row_topk(pre, B, D, k, out); }
void threshold_select(const float* pre, int64_t B, int64_t D, float threshold, int64_t limit, SparseCodes& out) {
  ref::threshold_select(pre, B, D, threshold, limit, out);
}

}  // namespace msae::kernels
