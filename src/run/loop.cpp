// The one training loop (msae/run.h): msae train, msae sweep, msae synth-bench and msae.train all step
// through run_loop.
#include <cmath>

#include "msae/run.h"

namespace msae::run {

void run_loop(train::Trainer& trainer, const LoopSpec& spec, train::MetricsInterval& interval, LoopHooks& hooks,
              LoopResult& r) {
  MSAE_ASSERT(hooks.next_batch, "run_loop needs next_batch");
  MSAE_ASSERT(spec.log_every > 0);
  const int64_t B = trainer.options().batch, d = trainer.options().sae.d_in;
  std::vector<float> x(static_cast<size_t>(B * d));
  r = LoopResult{};
  r.done = spec.start;
  while (spec.steps < 0 || r.done < spec.steps) {
    if (hooks.stop && hooks.stop()) {
      r.interrupted = true;
      break;
    }
    Timer t;
    if (!hooks.next_batch(x.data())) {
      r.data_ended = true;
      r.data_seconds += t.seconds();
      break;
    }
    r.data_seconds += t.seconds();
    t.reset();
    const StepStats& s = trainer.step(x.data());
    r.step_seconds += t.seconds();
    const int64_t done = ++r.done;
    if (!std::isfinite(s.loss))
      runtime_error(spec.label.empty() ? "" : spec.label + ": ", "the loss became ", s.loss, " at step ", done,
                    "; lower ", opt("lr"), " or check the data");
    interval.add(s);
    if (done % spec.log_every == 0 || done == spec.steps) {
      if (hooks.log) hooks.log(done, interval, s);
      interval = train::MetricsInterval{};
    }
    if (hooks.progress) hooks.progress(done, s);
    if (hooks.checkpoint && ((spec.checkpoint_every > 0 && done % spec.checkpoint_every == 0 && done != spec.steps) ||
                             (spec.checkpoint_at_end && done == spec.steps)))
      hooks.checkpoint(done);
  }
}

}  // namespace msae::run
