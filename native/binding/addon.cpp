// Node-API binding: a thin layer over routescope/engine.h that mirrors extension/src/engine/native.ts.
// Engine calls run on their own thread; routing and token callbacks, and the final result, travel to the JS thread
// through one thread-safe function per call, so every callback arrives before the promise settles.
#include <napi.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <utility>
#include <variant>
#include <vector>

#include "routescope/engine.h"

namespace rs = routescope;

namespace {

// ---------------------------------------------------------------------------------------------------------------
// Errors: every error reaching JS is an Error with a string `code`.

struct CodedError {
  std::string code;
  std::string message;
};

Napi::Error MakeError(Napi::Env env, const std::string& code, const std::string& message) {
  Napi::Error error = Napi::Error::New(env, message);
  error.Set("code", Napi::String::New(env, code));
  return error;
}

[[noreturn]] void Throw(Napi::Env env, const std::string& code, const std::string& message) {
  throw MakeError(env, code, message);
}

// Converts whatever the engine threw into a code and a message; never lets an exception through.
CodedError Classify(std::exception_ptr eptr) {
  try {
    std::rethrow_exception(eptr);
  } catch (const rs::Error& e) {
    return {e.code(), e.what()};
  } catch (const std::bad_alloc&) {
    return {"OOM", "out of memory"};
  } catch (const Napi::Error& e) {
    return {"INTERNAL", e.Message()};
  } catch (const std::exception& e) {
    return {"INTERNAL", std::string("internal error: ") + e.what()};
  } catch (...) {
    return {"INTERNAL", "internal error: unknown exception"};
  }
}

// Runs a synchronous JS-facing body; engine exceptions become coded JS errors.
template <typename F>
auto Guard(Napi::Env env, F&& body) -> decltype(body()) {
  try {
    return body();
  } catch (const Napi::Error&) {
    throw;  // already a JS error (argument checks, JS exceptions)
  } catch (...) {
    CodedError e = Classify(std::current_exception());
    throw MakeError(env, e.code, e.message);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Argument helpers.

std::vector<int> ReadIntArray(Napi::Env env, const Napi::Value& value, const char* what) {
  std::vector<int> out;
  if (value.IsTypedArray()) {
    Napi::TypedArray typed = value.As<Napi::TypedArray>();
    if (typed.TypedArrayType() != napi_int32_array) Throw(env, "BAD_ARGUMENT", std::string(what) + " must be an Int32Array");
    Napi::Int32Array ints = value.As<Napi::Int32Array>();
    out.assign(ints.Data(), ints.Data() + ints.ElementLength());
    return out;
  }
  if (value.IsArray()) {
    Napi::Array array = value.As<Napi::Array>();
    out.reserve(array.Length());
    for (uint32_t i = 0; i < array.Length(); ++i) {
      Napi::Value item = array.Get(i);
      if (!item.IsNumber()) Throw(env, "BAD_ARGUMENT", std::string(what) + " must contain integers");
      double d = item.As<Napi::Number>().DoubleValue();
      if (!std::isfinite(d) || d != std::floor(d) || d < -2147483648.0 || d > 2147483647.0)
        Throw(env, "BAD_ARGUMENT", std::string(what) + " must contain 32-bit integers");
      out.push_back(static_cast<int>(d));
    }
    return out;
  }
  Throw(env, "BAD_ARGUMENT", std::string(what) + " must be an Int32Array or an array of integers");
}

std::vector<float> ReadFloatArray(Napi::Env env, const Napi::Value& value, const char* what) {
  std::vector<float> out;
  if (value.IsTypedArray()) {
    Napi::TypedArray typed = value.As<Napi::TypedArray>();
    if (typed.TypedArrayType() == napi_float32_array) {
      Napi::Float32Array floats = value.As<Napi::Float32Array>();
      out.assign(floats.Data(), floats.Data() + floats.ElementLength());
      return out;
    }
    if (typed.TypedArrayType() == napi_float64_array) {
      Napi::Float64Array doubles = value.As<Napi::Float64Array>();
      for (size_t i = 0; i < doubles.ElementLength(); ++i) out.push_back(static_cast<float>(doubles[i]));
      return out;
    }
  } else if (value.IsArray()) {
    Napi::Array array = value.As<Napi::Array>();
    for (uint32_t i = 0; i < array.Length(); ++i) {
      Napi::Value item = array.Get(i);
      if (!item.IsNumber()) Throw(env, "BAD_ARGUMENT", std::string(what) + " must contain numbers");
      out.push_back(item.As<Napi::Number>().FloatValue());
    }
    return out;
  }
  Throw(env, "BAD_ARGUMENT", std::string(what) + " must be a Float32Array or an array of numbers");
}

Napi::Object OptionsObject(Napi::Env env, const Napi::CallbackInfo& info, size_t index, bool required) {
  if (info.Length() <= index || info[index].IsUndefined() || info[index].IsNull()) {
    if (required) Throw(env, "BAD_ARGUMENT", "options object expected");
    return Napi::Object::New(env);
  }
  if (!info[index].IsObject()) Throw(env, "BAD_ARGUMENT", "options must be an object");
  return info[index].As<Napi::Object>();
}

bool Has(const Napi::Object& obj, const char* key) {
  if (!obj.Has(key)) return false;
  Napi::Value v = obj.Get(key);
  return !v.IsUndefined() && !v.IsNull();
}

bool BoolOption(Napi::Env env, const Napi::Object& obj, const char* key, bool fallback) {
  if (!Has(obj, key)) return fallback;
  Napi::Value v = obj.Get(key);
  if (!v.IsBoolean()) Throw(env, "BAD_ARGUMENT", std::string("option ") + key + " must be a boolean");
  return v.As<Napi::Boolean>().Value();
}

double NumberOption(Napi::Env env, const Napi::Object& obj, const char* key, double fallback) {
  if (!Has(obj, key)) return fallback;
  Napi::Value v = obj.Get(key);
  if (!v.IsNumber()) Throw(env, "BAD_ARGUMENT", std::string("option ") + key + " must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d)) Throw(env, "BAD_ARGUMENT", std::string("option ") + key + " must be finite");
  return d;
}

int IntOption(Napi::Env env, const Napi::Object& obj, const char* key, int fallback) {
  double d = NumberOption(env, obj, key, fallback);
  if (d != std::floor(d) || d < -2147483648.0 || d > 2147483647.0)
    Throw(env, "BAD_ARGUMENT", std::string("option ") + key + " must be an integer");
  return static_cast<int>(d);
}

// maxNewTokens, temperature, topP, seed, stopTokens of generate() and generateRerouted().
rs::SampleOptions ReadSampleOptions(Napi::Env env, const Napi::Object& options) {
  rs::SampleOptions opts;
  opts.max_new_tokens = IntOption(env, options, "maxNewTokens", opts.max_new_tokens);
  opts.temperature = static_cast<float>(NumberOption(env, options, "temperature", opts.temperature));
  opts.top_p = static_cast<float>(NumberOption(env, options, "topP", opts.top_p));
  const double seed = NumberOption(env, options, "seed", 0);
  if (seed < 0 || seed != std::floor(seed)) Throw(env, "BAD_ARGUMENT", "option seed must be a non-negative integer");
  opts.seed = static_cast<uint64_t>(seed);
  if (Has(options, "stopTokens")) opts.stop_tokens = ReadIntArray(env, options.Get("stopTokens"), "stopTokens");
  return opts;
}

// A positional argument that must be a non-negative 32-bit integer (the caller has checked IsNumber); `what` names
// it in the error, e.g. "meanHidden(tokens, layer): layer".
int NonNegativeInt(Napi::Env env, const Napi::Value& v, const std::string& what) {
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || d != std::floor(d) || d < 0 || d > 2147483647.0)
    Throw(env, "BAD_ARGUMENT", what + " must be a non-negative integer");
  return static_cast<int>(d);
}

std::string StringOption(Napi::Env env, const Napi::Object& obj, const char* key, const std::string& fallback) {
  if (!Has(obj, key)) return fallback;
  Napi::Value v = obj.Get(key);
  if (!v.IsString()) Throw(env, "BAD_ARGUMENT", std::string("option ") + key + " must be a string");
  return v.As<Napi::String>().Utf8Value();
}

Napi::Function CallbackOption(Napi::Env env, const Napi::Object& obj, const char* key) {
  if (!Has(obj, key)) return Napi::Function();
  Napi::Value v = obj.Get(key);
  if (!v.IsFunction()) Throw(env, "BAD_ARGUMENT", std::string("option ") + key + " must be a function");
  return v.As<Napi::Function>();
}

Napi::Int32Array ToInt32Array(Napi::Env env, const std::vector<int>& values) {
  Napi::Int32Array out = Napi::Int32Array::New(env, values.size());
  if (!values.empty()) std::memcpy(out.Data(), values.data(), values.size() * sizeof(int32_t));
  return out;
}

Napi::Float32Array ToFloat32Array(Napi::Env env, const std::vector<float>& values) {
  Napi::Float32Array out = Napi::Float32Array::New(env, values.size());
  if (!values.empty()) std::memcpy(out.Data(), values.data(), values.size() * sizeof(float));
  return out;
}

Napi::Array ToIntList(Napi::Env env, const std::vector<int>& values) {
  Napi::Array out = Napi::Array::New(env, values.size());
  for (size_t i = 0; i < values.size(); ++i) out.Set(static_cast<uint32_t>(i), Napi::Number::New(env, values[i]));
  return out;
}

Napi::Object InfoToJs(Napi::Env env, const rs::ModelInfo& m) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("modelType", m.model_type);
  o.Set("dir", m.dir);
  o.Set("numLayers", m.num_layers);
  o.Set("hiddenSize", m.hidden_size);
  o.Set("numHeads", m.num_heads);
  o.Set("numKvHeads", m.num_kv_heads);
  o.Set("headDim", m.head_dim);
  o.Set("vocabSize", m.vocab_size);
  o.Set("numExperts", m.num_experts);
  o.Set("topK", m.top_k);
  o.Set("expertWidth", m.expert_width);
  o.Set("sharedExpertWidth", m.shared_expert_width);
  o.Set("normTopkProb", m.norm_topk_prob);
  o.Set("routingRule", m.routing_rule);
  o.Set("routerScoring", m.router_scoring);
  o.Set("maxPositionEmbeddings", m.max_position_embeddings);
  o.Set("moeLayers", ToIntList(env, m.moe_layers));
  o.Set("dtype", m.dtype);
  o.Set("expertLayout", m.expert_layout);
  o.Set("shards", m.shards);
  o.Set("parameters", static_cast<double>(m.parameters));
  o.Set("activeParameters", static_cast<double>(m.active_parameters));
  o.Set("weightBytes", static_cast<double>(m.weight_bytes));
  o.Set("eosTokenIds", ToIntList(env, m.eos_token_ids));
  Napi::Array warnings = Napi::Array::New(env, m.warnings.size());
  for (size_t i = 0; i < m.warnings.size(); ++i) warnings.Set(static_cast<uint32_t>(i), m.warnings[i]);
  o.Set("warnings", warnings);
  o.Set("backend", m.backend);
  o.Set("threads", m.threads);
  return o;
}

// Per-environment class constructors (worker threads each load their own copy of the addon).
struct AddonData {
  Napi::FunctionReference model_class;
  Napi::FunctionReference session_class;
  Napi::FunctionReference prefix_class;
};

// ---------------------------------------------------------------------------------------------------------------
// Shared state. A session holds the model's shared_ptr so the weights stay mapped while it exists; close() drops
// every idle session at once and lets a running one drop its references when its call ends.

struct SessionState;

struct ModelState {
  std::shared_ptr<rs::Model> model;  // null once closed
  rs::ModelInfo info;                // a copy, readable after close
  std::vector<std::weak_ptr<SessionState>> sessions;
  // C3PO calls (c3poPrefix, c3poNgd) run one at a time per model: cached prefixes own engine scratch state.
  std::shared_ptr<std::mutex> c3po_mu = std::make_shared<std::mutex>();
};

struct SessionState {
  std::shared_ptr<rs::Model> model;
  std::unique_ptr<rs::Session> session;  // declared after model: destroyed first
  rs::ModelInfo info;
  std::mutex mu;                         // guards busy/closed transitions between the JS thread and the worker
  bool busy = false;
  bool closed = false;
  // Set by cancel() for the running call. The engine clears its own flag when a call (and each decode step of
  // generate) starts, so the binding keeps this one and re-arms the engine's flag from its callbacks.
  std::atomic<bool> cancel_requested{false};
  std::atomic<int> position{0};

  // Called on the worker when the engine call returns: the weights go as soon as possible after close().
  void EngineDone() {
    std::lock_guard<std::mutex> lock(mu);
    if (session) position.store(session->position());
    if (closed) Release();
  }
  // Called on the JS thread just before the promise settles: from JS's view the call ends here.
  void CallDone() {
    std::lock_guard<std::mutex> lock(mu);
    busy = false;
    if (closed) Release();
  }
  void Release() {
    session.reset();
    model.reset();
  }
};

// ---------------------------------------------------------------------------------------------------------------
// One asynchronous engine call: a thread, a deferred and a thread-safe function carrying messages to JS.

struct RoutingMessage {
  int layer, start, count, num_experts, top_k;
  std::vector<float> router_logits;
  std::vector<int> experts;
  std::vector<float> weights;
};
struct TokenMessage {
  int token;
};
struct RoundMessage {
  rs::RerouteRound round;
};
struct DoneMessage {};
using Message = std::variant<RoutingMessage, TokenMessage, RoundMessage, DoneMessage>;

Napi::Array NumberArray(Napi::Env env, const std::vector<double>& values) {
  Napi::Array out = Napi::Array::New(env, values.size());
  for (size_t i = 0; i < values.size(); ++i) out.Set(static_cast<uint32_t>(i), Napi::Number::New(env, values[i]));
  return out;
}

// {"<layer>": Float32Array} from a per-layer map (router-bias gradients, rerouting delta).
Napi::Object LayerMapToJs(Napi::Env env, const std::map<int, std::vector<float>>& m) {
  Napi::Object o = Napi::Object::New(env);
  for (const auto& [layer, values] : m) o.Set(std::to_string(layer), ToFloat32Array(env, values));
  return o;
}

Napi::Object RoundToJs(Napi::Env env, const rs::RerouteRound& r) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("position", r.position);
  o.Set("layers", ToIntList(env, r.layers));
  o.Set("losses", NumberArray(env, r.losses));
  Napi::Object confidence = Napi::Object::New(env);
  for (const auto& [layer, c] : r.confidence) confidence.Set(std::to_string(layer), Napi::Number::New(env, c));
  o.Set("confidence", confidence);
  o.Set("delta", LayerMapToJs(env, r.delta));
  return o;
}

class Call;
void DeliverToJs(Napi::Env env, Napi::Function, Call* call, Message* message);
using CallTsfn = Napi::TypedThreadSafeFunction<Call, Message, DeliverToJs>;

class Call {
 public:
  using Work = std::function<void(Call&)>;
  using Resolver = std::function<Napi::Value(Napi::Env)>;

  Call(Napi::Env env, std::shared_ptr<SessionState> state, Napi::Function on_layer, Napi::Function on_token)
      : deferred_(Napi::Promise::Deferred::New(env)), state_(std::move(state)) {
    if (!on_layer.IsEmpty()) on_layer_ = Napi::Persistent(on_layer);
    if (!on_token.IsEmpty()) on_token_ = Napi::Persistent(on_token);
  }

  // Starts the work; the Call deletes itself once the thread-safe function is finalized.
  static Napi::Promise Start(Napi::Env env, std::unique_ptr<Call> call_owner, Work work, Resolver resolve) {
    Call* call = call_owner.release();
    call->work_ = std::move(work);
    call->resolve_ = std::move(resolve);
    Napi::Promise promise = call->deferred_.Promise();
    try {
      call->tsfn_ = CallTsfn::New(env, "routescope", 0, 1, call, [](Napi::Env, void*, Call* c) {
        if (c->thread_.joinable()) c->thread_.join();
        delete c;
      });
    } catch (...) {
      call->state_->EngineDone();
      call->state_->CallDone();
      CodedError e = Classify(std::current_exception());
      call->deferred_.Reject(MakeError(env, e.code, e.message).Value());
      delete call;
      return promise;
    }
    try {
      call->thread_ = std::thread([call] { call->Run(); });
    } catch (...) {  // no thread to be had: settle the promise through the same queue
      call->failure_ = std::make_unique<CodedError>(Classify(std::current_exception()));
      call->state_->EngineDone();
      call->Send(new Message(DoneMessage{}));
      call->tsfn_.Release();
    }
    return promise;
  }

  // Worker side. Every engine callback re-arms a requested cancel (see SessionState::cancel_requested).
  void EmitLayer(const rs::LayerRouting& r) {
    RearmCancel();
    if (on_layer_.IsEmpty()) return;
    RoutingMessage m{r.layer, r.start, r.count, r.num_experts, r.top_k, {}, {}, {}};
    size_t logits = static_cast<size_t>(r.count) * r.num_experts, picks = static_cast<size_t>(r.count) * r.top_k;
    if (r.router_logits) m.router_logits.assign(r.router_logits, r.router_logits + logits);
    if (r.experts) m.experts.assign(r.experts, r.experts + picks);
    if (r.weights) m.weights.assign(r.weights, r.weights + picks);
    Send(new Message(std::move(m)));
  }
  bool EmitToken(int token) {
    if (!on_token_.IsEmpty()) Send(new Message(TokenMessage{token}));
    return !callback_failed_.load() && !cancel_requested();
  }
  void EmitRound(const rs::RerouteRound& round) {
    RearmCancel();
    if (!on_round_.IsEmpty()) Send(new Message(RoundMessage{round}));
  }
  void SetOnRound(Napi::Function on_round) {
    if (!on_round.IsEmpty()) on_round_ = Napi::Persistent(on_round);
  }
  bool cancel_requested() const { return state_->cancel_requested.load(); }
  void RearmCancel() {
    if (cancel_requested()) state_->session->cancel();
  }
  [[noreturn]] static void ThrowCancelled() { throw rs::Error("CANCELLED", "cancelled"); }
  rs::Session& session() { return *state_->session; }

  // JS side.
  void Deliver(Napi::Env env, Message* message) {
    std::unique_ptr<Message> owned(message);
    if (env == nullptr) return;  // environment shutting down
    if (auto* r = std::get_if<RoutingMessage>(message)) {
      if (!callback_error_.IsEmpty()) return;  // after a throwing callback, stay quiet until the call ends
      try {
        Napi::Object o = Napi::Object::New(env);
        o.Set("layer", r->layer);
        o.Set("start", r->start);
        o.Set("count", r->count);
        o.Set("numExperts", r->num_experts);
        o.Set("topK", r->top_k);
        o.Set("routerLogits", ToFloat32Array(env, r->router_logits));
        o.Set("experts", ToInt32Array(env, r->experts));
        o.Set("weights", ToFloat32Array(env, r->weights));
        on_layer_.Call({o});
      } catch (const Napi::Error& e) {
        CallbackFailed(e);
      }
    } else if (auto* t = std::get_if<TokenMessage>(message)) {
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
        } catch (const Napi::Error& e) {
          deferred_.Reject(e.Value());
        } catch (...) {
          CodedError ce = Classify(std::current_exception());
          deferred_.Reject(MakeError(env, ce.code, ce.message).Value());
        }
      }
      on_layer_.Reset();
      on_token_.Reset();
      on_round_.Reset();
      callback_error_.Reset();
    }
  }

 private:
  void Run() {
    try {
      if (cancel_requested()) ThrowCancelled();  // cancelled before the engine started
      work_(*this);
    } catch (...) {
      failure_ = std::make_unique<CodedError>(Classify(std::current_exception()));
    }
    state_->EngineDone();
    // The done message must be delivered even if the queue is closing; a blocking call never drops it.
    Send(new Message(DoneMessage{}));
    tsfn_.Release();
  }

  void Send(Message* message) {
    if (tsfn_.BlockingCall(message) != napi_ok) delete message;
  }

  // A JS callback threw: remember the error, stop the engine, reject the promise with it at the end.
  void CallbackFailed(const Napi::Error& e) {
    callback_error_ = Napi::Persistent(e.Value());
    callback_failed_.store(true);
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->cancel_requested.store(true);
    if (state_->session) state_->session->cancel();
  }

  Napi::Promise::Deferred deferred_;
  std::shared_ptr<SessionState> state_;
  Napi::FunctionReference on_layer_, on_token_, on_round_;
  Napi::ObjectReference callback_error_;
  std::atomic<bool> callback_failed_{false};
  CallTsfn tsfn_;
  std::thread thread_;
  Work work_;
  Resolver resolve_;
  std::unique_ptr<CodedError> failure_;  // written by the worker before the done message, read after it
};

void DeliverToJs(Napi::Env env, Napi::Function, Call* call, Message* message) { call->Deliver(env, message); }

// ---------------------------------------------------------------------------------------------------------------
// Session wrapper.

class SessionWrap : public Napi::ObjectWrap<SessionWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Session",
                                      {InstanceMethod<&SessionWrap::Forward>("forward"),
                                       InstanceMethod<&SessionWrap::Generate>("generate"),
                                       InstanceMethod<&SessionWrap::Grad>("grad"),
                                       InstanceMethod<&SessionWrap::GenerateRerouted>("generateRerouted"),
                                       InstanceMethod<&SessionWrap::MeanHidden>("meanHidden"),
                                       InstanceMethod<&SessionWrap::Reset>("reset"),
                                       InstanceMethod<&SessionWrap::Truncate>("truncate"),
                                       InstanceMethod<&SessionWrap::Cancel>("cancel"),
                                       InstanceAccessor<&SessionWrap::Position>("position")});
  }

  static Napi::Object New(Napi::Env env, std::shared_ptr<SessionState> state) {
    Napi::Object obj = env.GetInstanceData<AddonData>()->session_class.New({});
    Unwrap(obj)->state_ = std::move(state);
    return obj;
  }

  explicit SessionWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<SessionWrap>(info) {}

 private:
  // Claims the session for one call; a rejected promise when it is closed or busy.
  bool Claim(Napi::Env env, Napi::Promise::Deferred& deferred) {
    if (!state_) {
      deferred.Reject(MakeError(env, "CLOSED", "session is not initialised").Value());
      return false;
    }
    std::lock_guard<std::mutex> lock(state_->mu);
    if (state_->closed || !state_->session) {
      deferred.Reject(MakeError(env, "CLOSED", "the model was closed").Value());
      return false;
    }
    if (state_->busy) {
      deferred.Reject(
          MakeError(env, "BUSY", "the session is already running a call; wait for it or cancel it").Value());
      return false;
    }
    state_->busy = true;
    state_->cancel_requested.store(false);
    return true;
  }

  void Unclaim() {
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->busy = false;
  }

  rs::Patch ReadPatch(Napi::Env env, const Napi::Object& options) {
    std::string json = StringOption(env, options, "patch", "");
    if (json.empty()) return rs::Patch{};
    return rs::parse_patch(json, state_->info);
  }

  // Common frame of the three async calls: argument errors reject the promise rather than throw.
  template <typename Prepare>
  Napi::Value Async(const Napi::CallbackInfo& info, Prepare prepare) {
    Napi::Env env = info.Env();
    Napi::Promise::Deferred deferred = Napi::Promise::Deferred::New(env);
    if (!Claim(env, deferred)) return deferred.Promise();
    try {
      return prepare(env);
    } catch (const Napi::Error& e) {
      Unclaim();
      deferred.Reject(e.Value());
    } catch (...) {
      Unclaim();
      CodedError e = Classify(std::current_exception());
      deferred.Reject(MakeError(env, e.code, e.message).Value());
    }
    return deferred.Promise();
  }

  Napi::Value Forward(const Napi::CallbackInfo& info) {
    return Async(info, [&](Napi::Env env) -> Napi::Value {
      if (info.Length() < 1) Throw(env, "BAD_ARGUMENT", "forward(tokens, options): tokens expected");
      auto tokens = std::make_shared<std::vector<int>>(ReadIntArray(env, info[0], "tokens"));
      Napi::Object options = OptionsObject(env, info, 1, false);
      auto patch = std::make_shared<rs::Patch>(ReadPatch(env, options));
      std::string mode_name = StringOption(env, options, "logits", "last");
      rs::LogitsMode mode;
      if (mode_name == "last") mode = rs::LogitsMode::Last;
      else if (mode_name == "all") mode = rs::LogitsMode::All;
      else if (mode_name == "none") mode = rs::LogitsMode::None;
      else Throw(env, "BAD_ARGUMENT", "option logits must be 'last', 'all' or 'none'");
      auto result = std::make_shared<rs::ForwardResult>();
      auto call = std::make_unique<Call>(env, state_, CallbackOption(env, options, "onLayer"), Napi::Function());
      return Call::Start(
          env, std::move(call),
          [tokens, patch, mode, result](Call& c) {
            *result = c.session().forward(*tokens, *patch, mode, [&c](const rs::LayerRouting& r) { c.EmitLayer(r); });
          },
          [result](Napi::Env env) -> Napi::Value {
            Napi::Object o = Napi::Object::New(env);
            o.Set("logits", ToFloat32Array(env, result->logits));
            o.Set("rows", result->rows);
            return o;
          });
    });
  }

  Napi::Value Generate(const Napi::CallbackInfo& info) {
    return Async(info, [&](Napi::Env env) -> Napi::Value {
      if (info.Length() < 1) Throw(env, "BAD_ARGUMENT", "generate(prompt, options): prompt expected");
      auto prompt = std::make_shared<std::vector<int>>(ReadIntArray(env, info[0], "prompt"));
      Napi::Object options = OptionsObject(env, info, 1, false);
      auto patch = std::make_shared<rs::Patch>(ReadPatch(env, options));
      auto opts = std::make_shared<rs::SampleOptions>(ReadSampleOptions(env, options));
      auto generated = std::make_shared<std::vector<int>>();
      auto call = std::make_unique<Call>(env, state_, CallbackOption(env, options, "onLayer"),
                                         CallbackOption(env, options, "onToken"));
      return Call::Start(
          env, std::move(call),
          [prompt, patch, opts, generated](Call& c) {
            *generated = c.session().generate(*prompt, *patch, *opts, [&c](int t) { return c.EmitToken(t); },
                                              [&c](const rs::LayerRouting& r) { c.EmitLayer(r); });
            // A cancel stops generation at the next token even between decode steps; report it as such.
            if (c.cancel_requested()) Call::ThrowCancelled();
          },
          [generated](Napi::Env env) -> Napi::Value {
            Napi::Object o = Napi::Object::New(env);
            o.Set("tokens", ToInt32Array(env, *generated));
            return o;
          });
    });
  }

  Napi::Value Grad(const Napi::CallbackInfo& info) {
    return Async(info, [&](Napi::Env env) -> Napi::Value {
      if (info.Length() < 1) Throw(env, "BAD_ARGUMENT", "grad(tokens, options): tokens expected");
      auto tokens = std::make_shared<std::vector<int>>(ReadIntArray(env, info[0], "tokens"));
      Napi::Object options = OptionsObject(env, info, 1, true);
      auto patch = std::make_shared<rs::Patch>(ReadPatch(env, options));
      auto req = std::make_shared<rs::GradRequest>();
      if (Has(options, "layers")) req->bias_layers = ReadIntArray(env, options.Get("layers"), "layers");
      if (Has(options, "target")) {
        std::vector<int> target = ReadIntArray(env, options.Get("target"), "target");
        if (target.size() != 2) Throw(env, "BAD_ARGUMENT", "option target must be [start, end]");
        req->target_start = target[0];
        req->target_end = target[1];
      }
      bool want_mix = Has(options, "mix");
      if (want_mix) {
        Napi::Value mix_value = options.Get("mix");
        if (!mix_value.IsObject()) Throw(env, "BAD_ARGUMENT", "option mix must be {layer, position, logits}");
        Napi::Object mix = mix_value.As<Napi::Object>();
        req->mix_layer = IntOption(env, mix, "layer", -1);
        req->mix_position = IntOption(env, mix, "position", -1);
        if (!Has(mix, "logits")) Throw(env, "BAD_ARGUMENT", "option mix.logits expected");
        req->mix_logits = ReadFloatArray(env, mix.Get("logits"), "mix.logits");
      }
      auto result = std::make_shared<rs::GradResult>();
      auto call = std::make_unique<Call>(env, state_, Napi::Function(), Napi::Function());
      return Call::Start(
          env, std::move(call), [tokens, patch, req, result](Call& c) {
            *result = c.session().grad(*tokens, *patch, *req);
          },
          [result, want_mix](Napi::Env env) -> Napi::Value {
            Napi::Object o = Napi::Object::New(env);
            o.Set("loss", result->loss);
            o.Set("biasGrad", LayerMapToJs(env, result->bias_grad));
            if (want_mix) o.Set("mixGrad", ToFloat32Array(env, result->mix_grad));
            return o;
          });
    });
  }

  Napi::Value GenerateRerouted(const Napi::CallbackInfo& info) {
    return Async(info, [&](Napi::Env env) -> Napi::Value {
      if (info.Length() < 1) Throw(env, "BAD_ARGUMENT", "generateRerouted(prompt, options): prompt expected");
      auto prompt = std::make_shared<std::vector<int>>(ReadIntArray(env, info[0], "prompt"));
      Napi::Object options = OptionsObject(env, info, 1, true);
      auto patch = std::make_shared<rs::Patch>(ReadPatch(env, options));
      auto opts = std::make_shared<rs::SampleOptions>(ReadSampleOptions(env, options));
      if (!Has(options, "reroute") || !options.Get("reroute").IsObject())
        Throw(env, "BAD_ARGUMENT", "option reroute must be an object {interval, steps, lr, optimizer, layerFraction, leastConfidentFirst}");
      Napi::Object ro = options.Get("reroute").As<Napi::Object>();
      auto ropts = std::make_shared<rs::RerouteOptions>();
      if (Has(ro, "layers")) ropts->layers = ReadIntArray(env, ro.Get("layers"), "reroute.layers");
      ropts->interval = IntOption(env, ro, "interval", ropts->interval);
      ropts->steps = IntOption(env, ro, "steps", ropts->steps);
      ropts->lr = static_cast<float>(NumberOption(env, ro, "lr", ropts->lr));
      std::string optimizer = StringOption(env, ro, "optimizer", "adam");
      if (optimizer != "adam" && optimizer != "sgd") Throw(env, "BAD_ARGUMENT", "option reroute.optimizer must be 'adam' or 'sgd'");
      ropts->adam = optimizer == "adam";
      ropts->layer_fraction = static_cast<float>(NumberOption(env, ro, "layerFraction", ropts->layer_fraction));
      ropts->least_confident_first = BoolOption(env, ro, "leastConfidentFirst", ropts->least_confident_first);
      auto result = std::make_shared<rs::RerouteResult>();
      auto call = std::make_unique<Call>(env, state_, Napi::Function(), CallbackOption(env, options, "onToken"));
      call->SetOnRound(CallbackOption(env, options, "onRound"));
      return Call::Start(
          env, std::move(call),
          [prompt, patch, opts, ropts, result](Call& c) {
            *result = c.session().generate_rerouted(*prompt, *patch, *opts, *ropts, [&c](int t) { return c.EmitToken(t); },
                                                    [&c](const rs::RerouteRound& r) { c.EmitRound(r); });
            if (c.cancel_requested()) Call::ThrowCancelled();
          },
          [result](Napi::Env env) -> Napi::Value {
            Napi::Object o = Napi::Object::New(env);
            o.Set("tokens", ToInt32Array(env, result->tokens));
            Napi::Array rounds = Napi::Array::New(env, result->rounds.size());
            for (size_t i = 0; i < result->rounds.size(); ++i) rounds.Set(static_cast<uint32_t>(i), RoundToJs(env, result->rounds[i]));
            o.Set("rounds", rounds);
            o.Set("delta", LayerMapToJs(env, result->delta));
            return o;
          });
    });
  }

  Napi::Value MeanHidden(const Napi::CallbackInfo& info) {
    return Async(info, [&](Napi::Env env) -> Napi::Value {
      if (info.Length() < 2) Throw(env, "BAD_ARGUMENT", "meanHidden(tokens, layer): tokens and layer expected");
      auto tokens = std::make_shared<std::vector<int>>(ReadIntArray(env, info[0], "tokens"));
      if (!info[1].IsNumber()) Throw(env, "BAD_ARGUMENT", "meanHidden(tokens, layer): layer must be an integer");
      const int layer = NonNegativeInt(env, info[1], "meanHidden(tokens, layer): layer");
      auto result = std::make_shared<std::vector<float>>();
      auto call = std::make_unique<Call>(env, state_, Napi::Function(), Napi::Function());
      return Call::Start(
          env, std::move(call), [tokens, layer, result](Call& c) { *result = c.session().mean_hidden(*tokens, layer); },
          [result](Napi::Env env) -> Napi::Value { return ToFloat32Array(env, *result); });
    });
  }

  // Runs `change` on the session under its lock, refusing while a call runs (`what` names the method in the error).
  template <class F>
  Napi::Value WhileIdle(Napi::Env env, const char* what, F&& change) {
    return Guard(env, [&]() -> Napi::Value {
      if (!state_) Throw(env, "CLOSED", "session is not initialised");
      std::lock_guard<std::mutex> lock(state_->mu);
      if (state_->closed || !state_->session) Throw(env, "CLOSED", "the model was closed");
      if (state_->busy) Throw(env, "BUSY", std::string("the session is running a call; cancel it before ") + what);
      change(*state_->session);
      state_->position.store(state_->session->position());
      return env.Undefined();
    });
  }

  Napi::Value Reset(const Napi::CallbackInfo& info) {
    return WhileIdle(info.Env(), "reset()", [](rs::Session& s) { s.reset(); });
  }

  Napi::Value Truncate(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsNumber()) Throw(env, "BAD_ARGUMENT", "truncate(position): a position expected");
    const int position = NonNegativeInt(env, info[0], "truncate(position): position");
    return WhileIdle(env, "truncate()", [position](rs::Session& s) { s.truncate(position); });
  }

  Napi::Value Cancel(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return Guard(env, [&]() -> Napi::Value {
      if (!state_) return env.Undefined();
      std::lock_guard<std::mutex> lock(state_->mu);
      if (state_->session && state_->busy) {
        state_->cancel_requested.store(true);
        state_->session->cancel();
      }
      return env.Undefined();
    });
  }

  Napi::Value Position(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), state_ ? state_->position.load() : 0);
  }

  std::shared_ptr<SessionState> state_;
};

// ---------------------------------------------------------------------------------------------------------------
// Model-level asynchronous calls (C3PO): no callbacks, so a plain AsyncWorker on libuv's pool is enough.

class ModelTask : public Napi::AsyncWorker {
 public:
  using Work = std::function<void()>;
  using Resolver = std::function<Napi::Value(Napi::Env)>;
  static Napi::Promise Start(Napi::Env env, Work work, Resolver resolve) {
    auto* task = new ModelTask(env, std::move(work), std::move(resolve));
    Napi::Promise promise = task->deferred_.Promise();
    task->Queue();
    return promise;
  }

 protected:
  void Execute() override {
    try {
      work_();
    } catch (...) {
      failure_ = std::make_unique<CodedError>(Classify(std::current_exception()));
    }
  }
  void OnOK() override {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    if (failure_) {
      deferred_.Reject(MakeError(env, failure_->code, failure_->message).Value());
      return;
    }
    try {
      deferred_.Resolve(resolve_(env));
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
    } catch (...) {
      CodedError ce = Classify(std::current_exception());
      deferred_.Reject(MakeError(env, ce.code, ce.message).Value());
    }
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  ModelTask(Napi::Env env, Work work, Resolver resolve)
      : Napi::AsyncWorker(env, "routescope-c3po"), deferred_(Napi::Promise::Deferred::New(env)),
        work_(std::move(work)), resolve_(std::move(resolve)) {}
  Napi::Promise::Deferred deferred_;
  Work work_;
  Resolver resolve_;
  std::unique_ptr<CodedError> failure_;
};

// A reference item's prompt cached for C3PO. Holds the model so its weights stay mapped while the prefix exists.
struct PrefixState {
  std::shared_ptr<rs::Model> model;
  std::shared_ptr<rs::C3poPrefix> prefix;  // declared after model: destroyed first
  int tokens = 0;
  int first_layer = 0;
};

class PrefixWrap : public Napi::ObjectWrap<PrefixWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "C3poPrefix",
                       {InstanceMethod<&PrefixWrap::Release>("release"),
                        InstanceAccessor<&PrefixWrap::Tokens>("tokens"),
                        InstanceAccessor<&PrefixWrap::FirstLayer>("firstLayer")});
  }
  static Napi::Object New(Napi::Env env, PrefixState state) {
    Napi::Object obj = env.GetInstanceData<AddonData>()->prefix_class.New({});
    Unwrap(obj)->state_ = std::move(state);
    return obj;
  }
  // The prefix behind a JS value, or a BAD_ARGUMENT error.
  static std::shared_ptr<rs::C3poPrefix> From(Napi::Env env, const Napi::Value& value, const std::string& what) {
    if (!value.IsObject() || !value.As<Napi::Object>().InstanceOf(env.GetInstanceData<AddonData>()->prefix_class.Value()))
      Throw(env, "BAD_ARGUMENT", what + " must be a prefix returned by c3poPrefix()");
    PrefixWrap* wrap = Unwrap(value.As<Napi::Object>());
    if (!wrap->state_.prefix) Throw(env, "BAD_ARGUMENT", what + " was released");
    return wrap->state_.prefix;
  }
  explicit PrefixWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<PrefixWrap>(info) {}
  ~PrefixWrap() override { DropState(); }

 private:
  // The engine frees a prefix's KV cache when the last reference goes; a running c3poNgd holds its own reference
  // (and drops it under the model's C3PO lock), so releasing here never pulls state from under the engine.
  void DropState() {
    state_.prefix.reset();
    state_.model.reset();
  }
  Napi::Value Release(const Napi::CallbackInfo& info) {
    DropState();
    return info.Env().Undefined();
  }
  Napi::Value Tokens(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), state_.tokens); }
  Napi::Value FirstLayer(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), state_.first_layer); }

  PrefixState state_;
};

// ---------------------------------------------------------------------------------------------------------------
// Model wrapper.

class ModelWrap : public Napi::ObjectWrap<ModelWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Model",
                                      {InstanceMethod<&ModelWrap::Info>("info"),
                                       InstanceMethod<&ModelWrap::CreateSession>("createSession"),
                                       InstanceMethod<&ModelWrap::C3poPrefix>("c3poPrefix"),
                                       InstanceMethod<&ModelWrap::C3poNgd>("c3poNgd"),
                                       InstanceMethod<&ModelWrap::Close>("close")});
  }

  static Napi::Object New(Napi::Env env, std::unique_ptr<rs::Model> model) {
    Napi::Object obj = env.GetInstanceData<AddonData>()->model_class.New({});
    auto state = std::make_shared<ModelState>();
    state->info = model->info();
    state->model = std::shared_ptr<rs::Model>(std::move(model));
    Unwrap(obj)->state_ = std::move(state);
    return obj;
  }

  explicit ModelWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ModelWrap>(info) {}
  ~ModelWrap() override {
    // Garbage-collected without close(): sessions still referencing the model keep it alive.
    if (state_) state_->model.reset();
  }

 private:
  Napi::Value Info(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return Guard(env, [&]() -> Napi::Value {
      if (!state_ || !state_->model) Throw(env, "CLOSED", "the model was closed");
      return InfoToJs(env, state_->model->info());
    });
  }

  Napi::Value CreateSession(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return Guard(env, [&]() -> Napi::Value {
      if (!state_ || !state_->model) Throw(env, "CLOSED", "the model was closed");
      int max_context = 0;
      if (info.Length() > 0 && !info[0].IsUndefined() && !info[0].IsNull()) {
        if (!info[0].IsNumber()) Throw(env, "BAD_ARGUMENT", "createSession(maxContext): maxContext must be a number");
        max_context = NonNegativeInt(env, info[0], "createSession(maxContext): maxContext");
      }
      auto session = std::make_shared<SessionState>();
      session->session = state_->model->create_session(max_context);
      session->model = state_->model;
      session->info = state_->info;
      session->position.store(session->session->position());
      // Forget sessions that JS has already collected.
      auto& list = state_->sessions;
      list.erase(std::remove_if(list.begin(), list.end(), [](const auto& w) { return w.expired(); }), list.end());
      list.push_back(session);
      return SessionWrap::New(env, session);
    });
  }

  // Argument errors reject the promise (as the session calls do) rather than throw.
  template <typename Prepare>
  Napi::Value AsyncModel(const Napi::CallbackInfo& info, Prepare prepare) {
    Napi::Env env = info.Env();
    try {
      if (!state_ || !state_->model) Throw(env, "CLOSED", "the model was closed");
      return prepare(env);
    } catch (const Napi::Error& e) {
      Napi::Promise::Deferred deferred = Napi::Promise::Deferred::New(env);
      deferred.Reject(e.Value());
      return deferred.Promise();
    } catch (...) {
      Napi::Promise::Deferred deferred = Napi::Promise::Deferred::New(env);
      CodedError e = Classify(std::current_exception());
      deferred.Reject(MakeError(env, e.code, e.message).Value());
      return deferred.Promise();
    }
  }

  Napi::Value C3poPrefix(const Napi::CallbackInfo& info) {
    return AsyncModel(info, [&](Napi::Env env) -> Napi::Value {
      if (info.Length() < 2) Throw(env, "BAD_ARGUMENT", "c3poPrefix(prompt, firstLayer): prompt and firstLayer expected");
      auto prompt = std::make_shared<std::vector<int>>(ReadIntArray(env, info[0], "prompt"));
      if (!info[1].IsNumber()) Throw(env, "BAD_ARGUMENT", "c3poPrefix(prompt, firstLayer): firstLayer must be an integer");
      const int first_layer = NonNegativeInt(env, info[1], "c3poPrefix(prompt, firstLayer): firstLayer");
      for (int t : *prompt)
        if (t < 0 || t >= state_->info.vocab_size)
          Throw(env, "BAD_TOKENS", "token id " + std::to_string(t) + " is outside the vocabulary (0.." +
                                       std::to_string(state_->info.vocab_size - 1) + ")");
      std::shared_ptr<rs::Model> model = state_->model;
      std::shared_ptr<std::mutex> mu = state_->c3po_mu;
      auto result = std::make_shared<std::shared_ptr<rs::C3poPrefix>>();
      return ModelTask::Start(
          env,
          [model, mu, prompt, first_layer, result] {
            std::lock_guard<std::mutex> lock(*mu);
            *result = model->c3po_prefix(*prompt, first_layer);
          },
          [model, prompt, first_layer, result](Napi::Env env) -> Napi::Value {
            PrefixState st;
            st.model = model;
            st.prefix = *result;
            st.tokens = static_cast<int>(prompt->size());
            st.first_layer = first_layer;
            return PrefixWrap::New(env, std::move(st));
          });
    });
  }

  Napi::Value C3poNgd(const Napi::CallbackInfo& info) {
    return AsyncModel(info, [&](Napi::Env env) -> Napi::Value {
      if (info.Length() < 3) Throw(env, "BAD_ARGUMENT", "c3poNgd(omegaInit, neighbours, options): three arguments expected");
      if (!info[0].IsObject() || info[0].IsArray())
        Throw(env, "BAD_ARGUMENT", "c3poNgd: omegaInit must be an object {\"<layer>\": Float32Array(E)}");
      auto omega = std::make_shared<std::map<int, std::vector<float>>>();
      Napi::Object omega_obj = info[0].As<Napi::Object>();
      Napi::Array keys = omega_obj.GetPropertyNames();
      for (uint32_t i = 0; i < keys.Length(); ++i) {
        std::string key = keys.Get(i).ToString().Utf8Value();
        char* end = nullptr;
        long layer = std::strtol(key.c_str(), &end, 10);
        if (key.empty() || *end != '\0' || layer < 0 || layer > 1000000)
          Throw(env, "BAD_ARGUMENT", "c3poNgd: omegaInit key \"" + key + "\" is not a layer index");
        (*omega)[static_cast<int>(layer)] = ReadFloatArray(env, omega_obj.Get(key), "omegaInit row");
      }
      if (!info[1].IsArray()) Throw(env, "BAD_ARGUMENT", "c3poNgd: neighbours must be an array of {prefix, answer, weight}");
      Napi::Array list = info[1].As<Napi::Array>();
      auto neighbours = std::make_shared<std::vector<rs::C3poNeighbour>>();
      for (uint32_t i = 0; i < list.Length(); ++i) {
        Napi::Value item = list.Get(i);
        const std::string what = "neighbours[" + std::to_string(i) + "]";
        if (!item.IsObject()) Throw(env, "BAD_ARGUMENT", what + " must be {prefix, answer, weight}");
        Napi::Object n = item.As<Napi::Object>();
        rs::C3poNeighbour nb;
        nb.prefix = PrefixWrap::From(env, n.Get("prefix"), what + ".prefix");
        if (!Has(n, "answer")) Throw(env, "BAD_ARGUMENT", what + ".answer (a token id) expected");
        nb.answer = IntOption(env, n, "answer", 0);
        nb.weight = static_cast<float>(NumberOption(env, n, "weight", 1.0));
        neighbours->push_back(std::move(nb));
      }
      Napi::Object options = OptionsObject(env, info, 2, true);
      auto opts = std::make_shared<rs::C3poOptions>();
      if (!Has(options, "layers")) Throw(env, "BAD_ARGUMENT", "option layers (the critical layers) expected");
      opts->layers = ReadIntArray(env, options.Get("layers"), "layers");
      opts->core_experts = IntOption(env, options, "coreExperts", opts->core_experts);
      opts->steps = IntOption(env, options, "steps", opts->steps);
      if (opts->steps < 0) Throw(env, "BAD_ARGUMENT", "option steps must be >= 0");
      opts->lr_start = static_cast<float>(NumberOption(env, options, "lrStart", opts->lr_start));
      opts->lr_end = static_cast<float>(NumberOption(env, options, "lrEnd", opts->lr_end));
      std::shared_ptr<rs::Model> model = state_->model;
      std::shared_ptr<std::mutex> mu = state_->c3po_mu;
      auto result = std::make_shared<rs::C3poResult>();
      return ModelTask::Start(
          env,
          [model, mu, omega, neighbours, opts, result] {
            std::lock_guard<std::mutex> lock(*mu);
            *result = model->c3po_ngd(*omega, *neighbours, *opts);
            neighbours->clear();  // drop the prefix references under the lock
          },
          [result](Napi::Env env) -> Napi::Value {
            Napi::Object o = Napi::Object::New(env);
            o.Set("omegaBefore", LayerMapToJs(env, result->omega_before));
            o.Set("omegaAfter", LayerMapToJs(env, result->omega_after));
            Napi::Object core = Napi::Object::New(env);
            for (const auto& [layer, v] : result->core) core.Set(std::to_string(layer), ToInt32Array(env, v));
            o.Set("core", core);
            o.Set("losses", NumberArray(env, result->losses));
            o.Set("firstGrad", LayerMapToJs(env, result->first_grad));
            return o;
          });
    });
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return Guard(env, [&]() -> Napi::Value {
      if (!state_) return env.Undefined();
      for (auto& weak : state_->sessions) {
        if (auto session = weak.lock()) {
          std::lock_guard<std::mutex> lock(session->mu);
          session->closed = true;
          if (session->busy) {
            session->cancel_requested.store(true);
            if (session->session) session->session->cancel();  // the worker releases it when the call ends
          } else {
            session->Release();
          }
        }
      }
      state_->sessions.clear();
      state_->model.reset();  // unmapped now unless a running call still holds it
      return env.Undefined();
    });
  }

  std::shared_ptr<ModelState> state_;
};

// ---------------------------------------------------------------------------------------------------------------

Napi::Value LoadModel(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return Guard(env, [&]() -> Napi::Value {
    if (info.Length() < 1 || !info[0].IsString()) Throw(env, "BAD_ARGUMENT", "loadModel(dir): dir must be a string");
    std::string dir = info[0].As<Napi::String>().Utf8Value();
    Napi::Object options = OptionsObject(env, info, 1, false);
    rs::LoadOptions load;
    load.threads = IntOption(env, options, "threads", 0);
    if (load.threads < 0) Throw(env, "BAD_ARGUMENT", "option threads must be >= 0");
    load.backend = StringOption(env, options, "backend", "auto");
    if (load.backend != "auto" && load.backend != "cpu" && load.backend != "cuda")
      Throw(env, "BAD_ARGUMENT", "option backend must be 'auto', 'cpu' or 'cuda'");
    std::unique_ptr<rs::Model> model = rs::Model::load(dir, load);
    if (!model) Throw(env, "INTERNAL", "internal error: the engine returned no model for " + dir);
    return ModelWrap::New(env, std::move(model));
  });
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto* data = new AddonData();
  data->model_class = Napi::Persistent(ModelWrap::Define(env));
  data->session_class = Napi::Persistent(SessionWrap::Define(env));
  data->prefix_class = Napi::Persistent(PrefixWrap::Define(env));
  env.SetInstanceData(data);
  exports.Set("version", Napi::String::New(env, "0.1.0"));
#ifdef RS_WITH_CUDA
  exports.Set("cudaCompiled", Napi::Boolean::New(env, true));
#else
  exports.Set("cudaCompiled", Napi::Boolean::New(env, false));
#endif
  exports.Set("loadModel", Napi::Function::New<LoadModel>(env, "loadModel"));
  return exports;
}

}  // namespace

NODE_API_MODULE(routescope, Init)
