// Asynchronous engine calls. A session call runs on a call thread (kept between calls, see CallThreads); its routing, token and round callbacks, and
// then its result, travel to the JS thread through one thread-safe function, so every callback arrives before the
// promise settles. A model call (C3PO) has no callbacks and runs on libuv's pool.
#pragma once
#include <napi.h>

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <variant>
#include <vector>

#include "convert.h"

namespace routescope::binding {

// A JS Session's engine session. It holds the model's shared_ptr so the weights stay mapped while it exists;
// Model.close() drops every idle session at once and lets a running one drop its references when its call ends.
struct SessionState {
  std::shared_ptr<Model> model;
  std::unique_ptr<Session> session;  // declared after model: destroyed first
  ModelInfo info;
  std::mutex mu;                     // guards in_flight/closed and releasing between the JS thread and the worker
  bool in_flight = false;            // a call holds the engine session's reservation until its promise settles
  bool closed = false;
  std::atomic<int> position{0};      // as of the last call's end: JS may read it while a call runs

  // Worker, when the engine call returns: the weights go as soon as possible after close().
  void EngineDone();
  // JS thread, just before the promise settles: from JS's view the call ends here.
  void CallDone();
  void Release();
};

// Typed-array buffers for one layer span of `rows` rows, allocated by the JS thread before the engine needs them,
// so that the worker copies the engine's routing straight into memory JS will own. The references are deleted on
// the JS thread; a slot dropped anywhere else (a closing queue, environment teardown) lets them go undeleted.
struct RoutingSlot {
  int rows = 0;
  Napi::Reference<Napi::ArrayBuffer> router_logits, experts, weights;
  float* router_logits_data = nullptr;  // [rows, E], written by the worker
  int32_t* experts_data = nullptr;      // [rows, k]
  float* weights_data = nullptr;        // [rows, k]
  void Forget() {
    for (auto* ref : {&router_logits, &experts, &weights}) ref->SuppressDestruct();
  }
};

// The messages of one call, worker to JS thread.
struct RoutingMessage {
  LayerRouting span;                  // the span's shape; its pointers are the engine's buffers when slot is empty,
                                      // valid until the JS thread has copied them (Call::EmitLayer waits)
  std::unique_ptr<RoutingSlot> slot;  // filled by the worker: nothing left to copy
};
struct TokenMessage {
  int token;
};
struct RoundMessage {
  RerouteRound round;
};
struct DoneMessage {};
using Message = std::variant<RoutingMessage, TokenMessage, RoundMessage, DoneMessage>;

class Call;
void DeliverToJs(Napi::Env env, Napi::Function, Call* call, Message* message);
using CallTsfn = Napi::TypedThreadSafeFunction<Call, Message, DeliverToJs>;

// One session call: a thread, a deferred and a thread-safe function carrying its messages to JS.
class Call {
 public:
  using Work = std::function<void(Call&)>;
  using Resolver = std::function<Napi::Value(Napi::Env)>;

  Call(Napi::Env env, std::shared_ptr<SessionState> state, Napi::Function on_layer, Napi::Function on_token,
       Napi::Function on_round = Napi::Function());
  ~Call();
  // With onLayer, allocates routing slots for the spans the call is expected to stream: one per MoE layer of
  // `first_rows` rows (the tokens of the first forward) and, when decode_rows > 0, four decode steps' worth of
  // `decode_rows`-row slots, topped up as they are delivered.
  void PlanRouting(Napi::Env env, int first_rows, int decode_rows);
  // Starts `work` on a call thread; `resolve` builds the result on the JS thread. The Call deletes itself once the
  // thread-safe function is finalized.
  static Napi::Promise Start(Napi::Env env, std::unique_ptr<Call> call, Work work, Resolver resolve);

  // Worker side: the engine's callbacks.
  void EmitLayer(const LayerRouting& r);
  bool EmitToken(int token);  // false stops generation (a JS callback threw)
  void EmitRound(const RerouteRound& round);
  Session& session() { return *state_->session; }

  // JS side (never with a null env: see DeliverToJs).
  void Deliver(Napi::Env env, Message* message);

 private:
  void Run();
  bool Send(Message* message);  // false (and the message dropped) when the queue is closing: teardown
  void CallbackFailed(const Napi::Error& e);
  void LayerCopied();           // lets the worker's EmitLayer return
  void Abandon();               // environment teardown: no copy will come, stop waiting for one
  void WakeWorker(bool& reason);  // sets reason (a flag guarded by routing_mu_) and wakes EmitLayer
  std::unique_ptr<RoutingSlot> NewSlot(Napi::Env env, int rows);
  std::unique_ptr<RoutingSlot> TakeSlot(int rows);  // worker: a free slot of exactly `rows` rows, or none
  void DeliverRouting(Napi::Env env, RoutingMessage& m);
  void DropSlots();             // JS thread, at the end of the call

  Napi::Promise::Deferred deferred_;
  std::shared_ptr<SessionState> state_;
  Napi::FunctionReference on_layer_, on_token_, on_round_;
  Napi::ObjectReference callback_error_;
  std::atomic<bool> callback_failed_{false};
  CallTsfn tsfn_;
  // Set once Run has returned on the call thread; the finalizer waits for it before deleting the call.
  struct Finished {
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    void Set();
    void Wait();
  };
  std::shared_ptr<Finished> finished_ = std::make_shared<Finished>();
  Work work_;
  Resolver resolve_;
  std::unique_ptr<CodedError> failure_;  // written by the worker before the done message, read after it
  // Routing: free slots (the worker takes them, the JS thread tops them up), else a handoff where the worker waits
  // in EmitLayer until the JS thread has copied the layer (or teardown). All guarded by routing_mu_.
  std::mutex routing_mu_;
  std::condition_variable handoff_cv_;
  std::vector<std::unique_ptr<RoutingSlot>> free_slots_;
  int decode_rows_ = 0;
  size_t decode_slots_ = 0;     // how many decode_rows_ slots to keep free
  bool layer_copied_ = false;
  bool abandoned_ = false;
};

// A model-level call (C3PO) on libuv's pool: no callbacks, so a plain AsyncWorker is enough.
class ModelTask : public Napi::AsyncWorker {
 public:
  using Work = std::function<void()>;
  using Resolver = std::function<Napi::Value(Napi::Env)>;
  static Napi::Promise Start(Napi::Env env, Work work, Resolver resolve);

 protected:
  void Execute() override;
  void OnOK() override;
  void OnError(const Napi::Error& e) override;

 private:
  ModelTask(Napi::Env env, Work work, Resolver resolve);
  Napi::Promise::Deferred deferred_;
  Work work_;
  Resolver resolve_;
  std::unique_ptr<CodedError> failure_;
};

}  // namespace routescope::binding
