// Asynchronous engine calls (see call.h).
#include "call.h"

#include <algorithm>
#include <chrono>
#include <deque>

namespace routescope::binding {

void SessionState::EngineDone() {
  std::lock_guard<std::mutex> lock(mu);
  if (session) position.store(session->position());
  if (closed) Release();
}

void SessionState::CallDone() {
  std::lock_guard<std::mutex> lock(mu);
  in_flight = false;
  if (session) session->release();
  if (closed) Release();
}

void SessionState::Release() {
  session.reset();
  model.reset();
}

// ---------------------------------------------------------------------------------------------------------------
// Session calls.

namespace {

// Threads that run session calls, each kept for a while after its call: the engine keeps per-thread scratch
// (layer buffers, matrix panels, backward temporaries) that a fresh thread per call allocated, faulted in and
// zeroed again on every call. A job starts at once on an idle thread or on a new one, never behind another call.
class CallThreads {
 public:
  // Never destroyed: idle threads may still wait on it while the process exits.
  static CallThreads& Get() {
    static CallThreads* threads = new CallThreads();
    return *threads;
  }
  // Runs job on an idle thread, or on a new one when none is idle (throws when no thread can be had).
  void Post(std::function<void()> job) {
    std::lock_guard<std::mutex> lock(mu_);
    jobs_.push_back(std::move(job));
    if (jobs_.size() <= idle_) {
      cv_.notify_one();
      return;
    }
    try {
      std::thread([this] { Loop(); }).detach();
    } catch (...) {
      jobs_.pop_back();
      throw;
    }
  }

 private:
  static constexpr std::chrono::seconds kIdle{60};  // an idle thread exits after this long
  void Loop() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      ++idle_;
      const bool got = cv_.wait_for(lock, kIdle, [&] { return !jobs_.empty(); });
      --idle_;
      if (!got) return;
      std::function<void()> job = std::move(jobs_.front());
      jobs_.pop_front();
      lock.unlock();
      job();
      lock.lock();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  size_t idle_ = 0;  // threads waiting for a job
};

}  // namespace

void Call::Finished::Set() {
  std::lock_guard<std::mutex> lock(mu);
  done = true;
  cv.notify_all();
}

void Call::Finished::Wait() {
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return done; });
}

Call::Call(Napi::Env env, std::shared_ptr<SessionState> state, Napi::Function on_layer, Napi::Function on_token,
           Napi::Function on_round)
    : deferred_(Napi::Promise::Deferred::New(env)), state_(std::move(state)) {
  if (!on_layer.IsEmpty()) on_layer_ = Napi::Persistent(on_layer);
  if (!on_token.IsEmpty()) on_token_ = Napi::Persistent(on_token);
  if (!on_round.IsEmpty()) on_round_ = Napi::Persistent(on_round);
}

Call::~Call() {
  for (auto& slot : free_slots_) slot->Forget();  // normally none left (DropSlots); at teardown, let them go
}

Napi::Promise Call::Start(Napi::Env env, std::unique_ptr<Call> call_owner, Work work, Resolver resolve) {
  Call* call = call_owner.release();
  call->work_ = std::move(work);
  call->resolve_ = std::move(resolve);
  Napi::Promise promise = call->deferred_.Promise();
  try {
    call->tsfn_ = CallTsfn::New(env, "routescope", 0, 1, call, [](Napi::Env, void*, Call* c) {
      c->Abandon();  // at environment teardown the worker may still wait for a layer copy that will not come
      c->finished_->Wait();
      delete c;
    });
  } catch (...) {
    call->state_->EngineDone();
    call->state_->CallDone();
    call->deferred_.Reject(ToJsError(env, std::current_exception()).Value());
    call->DropSlots();
    delete call;
    return promise;
  }
  try {
    CallThreads::Get().Post([call, finished = call->finished_] {
      call->Run();
      finished->Set();  // the call may be deleted from here on
    });
  } catch (...) {  // no thread to be had: settle the promise through the same queue
    call->failure_ = std::make_unique<CodedError>(Classify(std::current_exception()));
    call->state_->EngineDone();
    call->Send(new Message(DoneMessage{}));
    call->finished_->Set();
    call->tsfn_.Release();
  }
  return promise;
}

void Call::Run() {
  try {
    work_(*this);
  } catch (...) {
    failure_ = std::make_unique<CodedError>(Classify(std::current_exception()));
  }
  state_->EngineDone();
  // The done message must be delivered even if the queue is closing; a blocking call never drops it.
  Send(new Message(DoneMessage{}));
  tsfn_.Release();
}

bool Call::Send(Message* message) {
  if (tsfn_.BlockingCall(message) == napi_ok) return true;
  if (auto* r = std::get_if<RoutingMessage>(message); r && r->slot) r->slot->Forget();  // not on the JS thread
  delete message;
  return false;
}

// ---------------------------------------------------------------------------------------------------------------
// Routing: each layer's routing is copied once in this process, from the engine's buffers (valid only during the
// engine's callback) into the typed arrays onLayer receives. Usually the worker copies into slots the JS thread
// allocated ahead and goes on at once; for a span no slot fits, it waits while the JS thread copies.

std::unique_ptr<RoutingSlot> Call::NewSlot(Napi::Env env, int rows) {
  const ModelInfo& info = state_->info;
  const size_t logits = static_cast<size_t>(rows) * info.num_experts, picks = static_cast<size_t>(rows) * info.top_k;
  auto slot = std::make_unique<RoutingSlot>();
  slot->rows = rows;
  Napi::ArrayBuffer router_logits = Napi::ArrayBuffer::New(env, logits * sizeof(float));
  Napi::ArrayBuffer experts = Napi::ArrayBuffer::New(env, picks * sizeof(int32_t));
  Napi::ArrayBuffer weights = Napi::ArrayBuffer::New(env, picks * sizeof(float));
  slot->router_logits_data = static_cast<float*>(router_logits.Data());
  slot->experts_data = static_cast<int32_t*>(experts.Data());
  slot->weights_data = static_cast<float*>(weights.Data());
  slot->router_logits = Napi::Persistent(router_logits);
  slot->experts = Napi::Persistent(experts);
  slot->weights = Napi::Persistent(weights);
  return slot;
}

void Call::PlanRouting(Napi::Env env, int first_rows, int decode_rows) {
  if (on_layer_.IsEmpty() || first_rows <= 0) return;
  const size_t layers = state_->info.moe_layers.size();
  std::vector<std::unique_ptr<RoutingSlot>> slots;
  for (size_t l = 0; l < layers; ++l) slots.push_back(NewSlot(env, first_rows));
  const size_t decode_slots = decode_rows > 0 ? 4 * layers : 0;  // four steps ahead of the JS thread
  for (size_t l = 0; l < decode_slots; ++l) slots.push_back(NewSlot(env, decode_rows));
  std::lock_guard<std::mutex> lock(routing_mu_);
  for (auto& slot : slots) free_slots_.push_back(std::move(slot));
  decode_rows_ = decode_rows;
  decode_slots_ = decode_slots;
}

std::unique_ptr<RoutingSlot> Call::TakeSlot(int rows) {
  std::lock_guard<std::mutex> lock(routing_mu_);
  for (auto it = free_slots_.begin(); it != free_slots_.end(); ++it)
    if ((*it)->rows == rows) {
      std::unique_ptr<RoutingSlot> slot = std::move(*it);
      free_slots_.erase(it);
      return slot;
    }
  return nullptr;
}

void Call::EmitLayer(const LayerRouting& r) {
  if (on_layer_.IsEmpty() || callback_failed_.load()) return;
  LayerRouting span = r;
  const ModelInfo& info = state_->info;
  const bool fits = r.router_logits && r.experts && r.weights && r.num_experts == info.num_experts &&
                    r.top_k == info.top_k;
  if (std::unique_ptr<RoutingSlot> slot = fits ? TakeSlot(r.count) : nullptr) {
    const size_t logits = static_cast<size_t>(r.count) * r.num_experts, picks = static_cast<size_t>(r.count) * r.top_k;
    std::copy(r.router_logits, r.router_logits + logits, slot->router_logits_data);
    std::copy(r.experts, r.experts + picks, slot->experts_data);
    std::copy(r.weights, r.weights + picks, slot->weights_data);
    span.router_logits = nullptr;
    span.experts = nullptr;
    span.weights = nullptr;
    if (!Send(new Message(RoutingMessage{span, std::move(slot)}))) session().cancel();  // nobody listens any more
    return;
  }
  {
    std::lock_guard<std::mutex> lock(routing_mu_);
    if (abandoned_) return;
    layer_copied_ = false;
  }
  if (!Send(new Message(RoutingMessage{span, nullptr}))) {
    session().cancel();
    return;
  }
  std::unique_lock<std::mutex> lock(routing_mu_);
  handoff_cv_.wait(lock, [this] { return layer_copied_ || abandoned_; });
}

void Call::LayerCopied() { WakeWorker(layer_copied_); }

void Call::Abandon() { WakeWorker(abandoned_); }

void Call::WakeWorker(bool& reason) {
  {
    std::lock_guard<std::mutex> lock(routing_mu_);
    reason = true;
  }
  handoff_cv_.notify_one();
}

void Call::DeliverRouting(Napi::Env env, RoutingMessage& m) {
  Napi::Object routing;
  if (RoutingSlot* slot = m.slot.get()) {
    const size_t logits = static_cast<size_t>(slot->rows) * m.span.num_experts;
    const size_t picks = static_cast<size_t>(slot->rows) * m.span.top_k;
    if (callback_error_.IsEmpty())
      routing = RoutingToJs(env, m.span, Napi::Float32Array::New(env, logits, slot->router_logits.Value(), 0),
                            Napi::Int32Array::New(env, picks, slot->experts.Value(), 0),
                            Napi::Float32Array::New(env, picks, slot->weights.Value(), 0));
    for (auto* ref : {&slot->router_logits, &slot->experts, &slot->weights}) ref->Reset();
    // Keep the next decode steps' slots ready.
    size_t free_decode = 0;
    {
      std::lock_guard<std::mutex> lock(routing_mu_);
      for (const auto& s : free_slots_) free_decode += s->rows == decode_rows_;
    }
    std::vector<std::unique_ptr<RoutingSlot>> fresh;
    for (; decode_rows_ > 0 && free_decode + fresh.size() < decode_slots_;) fresh.push_back(NewSlot(env, decode_rows_));
    std::lock_guard<std::mutex> lock(routing_mu_);
    for (auto& s : fresh) free_slots_.push_back(std::move(s));
  } else {
    struct Copied {  // the worker waits until the engine's buffers are no longer read, whatever happens here
      Call* call;
      ~Copied() { call->LayerCopied(); }
    } copied{this};
    if (callback_error_.IsEmpty()) routing = RoutingToJs(env, m.span);
  }
  if (!callback_error_.IsEmpty()) return;  // quiet after a throwing callback
  on_layer_.Call({routing});
}

void Call::DropSlots() {
  std::lock_guard<std::mutex> lock(routing_mu_);
  for (auto& slot : free_slots_)
    for (auto* ref : {&slot->router_logits, &slot->experts, &slot->weights}) ref->Reset();
  free_slots_.clear();
  decode_rows_ = 0;
}

bool Call::EmitToken(int token) {
  if (!on_token_.IsEmpty()) Send(new Message(TokenMessage{token}));
  return !callback_failed_.load();
}

void Call::EmitRound(const RerouteRound& round) {
  if (!on_round_.IsEmpty()) Send(new Message(RoundMessage{round}));
}

void Call::Deliver(Napi::Env env, Message* message) {
  std::unique_ptr<Message> owned(message);
  if (auto* r = std::get_if<RoutingMessage>(message)) {
    try {
      DeliverRouting(env, *r);
    } catch (...) {
      CallbackFailed(ToJsError(env, std::current_exception()));
    }
    return;
  }
  if (auto* t = std::get_if<TokenMessage>(message)) {
    if (!callback_error_.IsEmpty()) return;
    try {
      on_token_.Call({Napi::Number::New(env, t->token)});
    } catch (const Napi::Error& e) {
      CallbackFailed(e);
    }
  } else if (auto* rm = std::get_if<RoundMessage>(message)) {
    if (!callback_error_.IsEmpty()) return;
    try {
      on_round_.Call({RoundToJs(env, rm->round)});
    } catch (const Napi::Error& e) {
      CallbackFailed(e);
    }
  } else {
    Napi::HandleScope scope(env);
    state_->CallDone();
    if (!callback_error_.IsEmpty()) {
      deferred_.Reject(callback_error_.Value());
    } else if (failure_) {
      deferred_.Reject(MakeError(env, failure_->code, failure_->message).Value());
    } else {
      try {
        deferred_.Resolve(resolve_(env));
      } catch (...) {
        deferred_.Reject(ToJsError(env, std::current_exception()).Value());
      }
    }
    DropSlots();
    on_layer_.Reset();
    on_token_.Reset();
    on_round_.Reset();
    callback_error_.Reset();
  }
}

// A JS callback threw: remember the error, stop the engine, reject the promise with it at the end.
void Call::CallbackFailed(const Napi::Error& e) {
  callback_error_ = Napi::Persistent(e.Value());
  callback_failed_.store(true);
  std::lock_guard<std::mutex> lock(state_->mu);
  if (state_->session) state_->session->cancel();
}

void DeliverToJs(Napi::Env env, Napi::Function, Call* call, Message* message) {
  // At environment teardown Node drains the queue after the finalizer has deleted the Call (and let its worker
  // go): only the message may be touched then.
  if (env == nullptr) {
    if (auto* r = std::get_if<RoutingMessage>(message); r && r->slot) r->slot->Forget();
    delete message;
    return;
  }
  call->Deliver(env, message);
}

// ---------------------------------------------------------------------------------------------------------------
// Model calls.

ModelTask::ModelTask(Napi::Env env, Work work, Resolver resolve)
    : Napi::AsyncWorker(env, "routescope-c3po"), deferred_(Napi::Promise::Deferred::New(env)),
      work_(std::move(work)), resolve_(std::move(resolve)) {}

Napi::Promise ModelTask::Start(Napi::Env env, Work work, Resolver resolve) {
  auto* task = new ModelTask(env, std::move(work), std::move(resolve));
  Napi::Promise promise = task->deferred_.Promise();
  task->Queue();
  return promise;
}

void ModelTask::Execute() {
  try {
    work_();
  } catch (...) {
    failure_ = std::make_unique<CodedError>(Classify(std::current_exception()));
  }
}

void ModelTask::OnOK() {
  Napi::Env env = Env();
  Napi::HandleScope scope(env);
  if (failure_) {
    deferred_.Reject(MakeError(env, failure_->code, failure_->message).Value());
    return;
  }
  try {
    deferred_.Resolve(resolve_(env));
  } catch (...) {
    deferred_.Reject(ToJsError(env, std::current_exception()).Value());
  }
}

void ModelTask::OnError(const Napi::Error& e) { deferred_.Reject(e.Value()); }

}  // namespace routescope::binding
