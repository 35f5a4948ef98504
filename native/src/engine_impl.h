// The engine's Model and Session implementations, shared by engine.cpp (running models) and adapt/ (rerouting and
// C3PO), which drive the decoder of a session directly.
#pragma once
#include <atomic>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "cpu/forward.h"
#include "cuda/backend.h"
#include "model/model.h"
#include "routescope/engine.h"
#include "util/threadpool.h"

namespace routescope {

class ModelImpl;

class SessionImpl : public Session {
 public:
  SessionImpl(ModelImpl& model, int max_context);
  ForwardResult forward(const std::vector<int>& tokens, const Patch& patch, LogitsMode mode,
                        const RoutingCallback& on_layer, int mean_hidden_layer = -1) override;
  std::vector<int> generate(const std::vector<int>& prompt, const Patch& patch, const SampleOptions& opts,
                            const std::function<bool(int)>& on_token, const RoutingCallback& on_layer) override;
  GradResult grad(const std::vector<int>& tokens, const Patch& patch, const GradRequest& req) override;
  std::vector<float> mean_hidden(const std::vector<int>& tokens, int layer) override;
  void reset() override;
  void truncate(int position) override;
  int position() const override { return pos_; }
  void reserve() override;
  void release() override;
  void cancel() override;

  // Marks a public call on this session for as long as it lives (see Session::reserve for the rules it enforces).
  class CallScope {
   public:
    explicit CallScope(SessionImpl& session);
    ~CallScope();
    CallScope(const CallScope&) = delete;
    CallScope& operator=(const CallScope&) = delete;

   private:
    SessionImpl& session_;
  };

  // Throws Error("CANCELLED") when a cancel is pending; for loops that run no layer forward between checks.
  void check_cancelled() const;
  // Checks token ids against the vocabulary and `already` + tokens against the context.
  void check_tokens(const std::vector<int>& tokens, int already) const;
  // Loss over target tokens [ts, te) from the last layer's output h (all positions); writes dLoss/dh when dh.
  double loss_and_grad(const std::vector<int>& tokens, const float* h, int ts, int te, float* dh);
  // Forgets the cache without the BUSY check, for calls that start over from inside a running call.
  void clear();
  // The decode loop of generation with and without rerouting: samples from `logits`, stops on a stop token, at
  // max_new_tokens, at the context limit or when on_token returns false; otherwise `step` runs the token and
  // returns the logits after it. Returns the generated tokens.
  std::vector<int> decode(std::vector<float> logits, const SampleOptions& opts,
                          const std::function<bool(int)>& on_token,
                          const std::function<std::vector<float>(int token)>& step);

  ModelImpl& m_;
  Decoder dec_;
  int max_context_;
  int pos_ = 0;
  std::vector<KVCache> cache_;
  std::unique_ptr<cuda::DeviceSession> device_;  // GPU KV cache when the model runs on CUDA
  bool on_device_ = false;     // this session's cache lives on the GPU (rerouting and C3PO run on the CPU path)
  // Activations of the last backward pass (grad, rerouting steps), kept so that the next pass reuses the memory
  // instead of faulting in fresh pages; released by trim_grad_workspace() when they hold more than a cap.
  std::vector<LayerSave> grad_saves_;
  std::vector<KVCache> grad_cache_;
  // Sizes the workspace for the model's layers; every entry may hold stale data from the previous pass.
  void prepare_grad_workspace();
  void trim_grad_workspace();
  int keep_layer_ = -1;        // when >= 0, forward() keeps the hidden input of this layer for every position
  std::vector<float> hidden_;  // [pos_, H]

 private:
  // Call state, guarded by state_mu_; cancel_ is read lock-free at every layer boundary.
  mutable std::mutex state_mu_;
  std::atomic<bool> cancel_{false};
  bool reserved_ = false;       // reserve() was called and release() not yet
  int depth_ = 0;               // nesting of public calls on runner_ (generate's forwards are nested)
  std::thread::id runner_;      // the thread running the outermost call while depth_ > 0
  void check_idle(const char* what) const;  // BUSY unless this thread may change the cache now
};

class ModelImpl : public Model {
 public:
  ModelImpl(std::unique_ptr<Checkpoint> ck, const LoadOptions& opts);
  const ModelInfo& info() const override { return info_; }
  std::unique_ptr<Session> create_session(int max_context) override {
    return std::make_unique<SessionImpl>(*this, max_context);
  }
  cuda::DeviceModel* device() { return device_.get(); }
  const Checkpoint& checkpoint() const { return *ck_; }
  ThreadPool& pool() { return *pool_; }
  // C3PO calls on one model run one at a time: NGD steps write the last row of each neighbour's cached KV.
  std::mutex& c3po_mutex() { return c3po_mu_; }

 private:
  std::unique_ptr<Checkpoint> ck_;
  std::unique_ptr<ThreadPool> pool_;
  ModelInfo info_;
  std::unique_ptr<cuda::DeviceModel> device_;  // weights on the GPU when the backend is cuda
  std::mutex c3po_mu_;
};

// The engine behind a public Model or Session, or Error("BAD_ARGUMENT") naming `what` for any other implementation.
ModelImpl& engine_model(Model& model, const char* what);
SessionImpl& engine_session(Session& session, const char* what);

// The score row θ stands for under the model's router (softmax(θ), or sigmoid(θ) for sigmoid routers): the mix
// rows of gradients and C3PO.
std::vector<float> scores_row(const ModelConfig& cfg, const std::vector<float>& theta);
// The θ whose scores_row is ω (log ω, or logit(ω) for sigmoid routers): C3PO's starting point.
std::vector<float> logits_of_scores(const ModelConfig& cfg, const std::vector<float>& omega);

}  // namespace routescope
