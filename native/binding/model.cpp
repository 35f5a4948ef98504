// The JS Model (info, createSession, the C3PO calls, close) and the C3poPrefix it hands out.
#include <algorithm>

#include "wrap.h"

namespace routescope::binding {

Napi::Function ModelWrap::Define(Napi::Env env) {
  return DefineClass(env, "Model",
                     {InstanceMethod<&ModelWrap::Info>("info"),
                      InstanceMethod<&ModelWrap::CreateSession>("createSession"),
                      InstanceMethod<&ModelWrap::C3poPrefix>("c3poPrefix"),
                      InstanceMethod<&ModelWrap::C3poNgd>("c3poNgd"),
                      InstanceMethod<&ModelWrap::Close>("close")});
}

Napi::Object ModelWrap::New(Napi::Env env, std::unique_ptr<Model> model) {
  Napi::Object obj = env.GetInstanceData<AddonData>()->model_class.New({});
  auto state = std::make_shared<ModelState>();
  state->info = model->info();
  state->model = std::shared_ptr<Model>(std::move(model));
  Unwrap(obj)->state_ = std::move(state);
  return obj;
}

ModelWrap::~ModelWrap() {
  // Garbage-collected without close(): sessions still referencing the model keep it alive.
  if (state_) state_->model.reset();
}

Model& ModelWrap::Open(Napi::Env env) {
  if (!state_ || !state_->model) Throw(env, "CLOSED", "the model was closed");
  return *state_->model;
}

template <typename Prepare>
Napi::Value ModelWrap::Async(const Napi::CallbackInfo& info, Prepare prepare) {
  Napi::Env env = info.Env();
  try {
    Open(env);
    return prepare(env);
  } catch (...) {
    return RejectedPromise(env, std::current_exception());
  }
}

Napi::Value ModelWrap::Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return Guard(env, [&]() -> Napi::Value { return InfoToJs(env, Open(env).info()); });
}

Napi::Value ModelWrap::CreateSession(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return Guard(env, [&]() -> Napi::Value {
    Model& model = Open(env);
    int max_context = 0;
    if (info.Length() > 0 && !info[0].IsUndefined() && !info[0].IsNull()) {
      if (!info[0].IsNumber()) Throw(env, "BAD_ARGUMENT", "createSession(maxContext): maxContext must be a number");
      max_context = NonNegativeInt(env, info[0], "createSession(maxContext): maxContext");
    }
    auto session = std::make_shared<SessionState>();
    session->session = model.create_session(max_context);
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

Napi::Value ModelWrap::C3poPrefix(const Napi::CallbackInfo& info) {
  return Async(info, [&](Napi::Env env) -> Napi::Value {
    if (info.Length() < 2) Throw(env, "BAD_ARGUMENT", "c3poPrefix(prompt, firstLayer): prompt and firstLayer expected");
    auto prompt = std::make_shared<std::vector<int>>(ReadIntArray(env, info[0], "prompt"));
    if (!info[1].IsNumber()) Throw(env, "BAD_ARGUMENT", "c3poPrefix(prompt, firstLayer): firstLayer must be an integer");
    const int first_layer = NonNegativeInt(env, info[1], "c3poPrefix(prompt, firstLayer): firstLayer");
    Napi::Object options = OptionsObject(env, info, 2, false);
    const bool cache_first_layer = BoolOption(env, options, "cacheFirstLayer", true);
    std::shared_ptr<Model> model = state_->model;
    auto result = std::make_shared<std::shared_ptr<routescope::C3poPrefix>>();
    return ModelTask::Start(
        env,
        [model, prompt, first_layer, cache_first_layer, result] {
          *result = c3po_prefix(*model, *prompt, first_layer, cache_first_layer);
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

Napi::Value ModelWrap::C3poNgd(const Napi::CallbackInfo& info) {
  return Async(info, [&](Napi::Env env) -> Napi::Value {
    if (info.Length() < 3) Throw(env, "BAD_ARGUMENT", "c3poNgd(omegaInit, neighbours, options): three arguments expected");
    auto omega = std::make_shared<std::map<int, std::vector<float>>>(ReadLayerMap(env, info[0], "c3poNgd: omegaInit"));
    if (!info[1].IsArray()) Throw(env, "BAD_ARGUMENT", "c3poNgd: neighbours must be an array of {prefix, answer, weight}");
    Napi::Array list = info[1].As<Napi::Array>();
    auto neighbours = std::make_shared<std::vector<C3poNeighbour>>();
    for (uint32_t i = 0; i < list.Length(); ++i) {
      Napi::Value item = list.Get(i);
      const std::string what = "neighbours[" + std::to_string(i) + "]";
      if (!item.IsObject()) Throw(env, "BAD_ARGUMENT", what + " must be {prefix, answer, weight}");
      Napi::Object n = item.As<Napi::Object>();
      C3poNeighbour nb;
      nb.prefix = PrefixWrap::From(env, n.Get("prefix"), what + ".prefix");
      if (!Has(n, "answer")) Throw(env, "BAD_ARGUMENT", what + ".answer (a token id) expected");
      nb.answer = IntOption(env, n, "answer", 0);
      nb.weight = static_cast<float>(NumberOption(env, n, "weight", 1.0));
      if (Has(n, "options")) nb.options = ReadIntArray(env, n.Get("options"), "neighbours[].options");
      neighbours->push_back(std::move(nb));
    }
    Napi::Object options = OptionsObject(env, info, 2, true);
    auto opts = std::make_shared<C3poOptions>();
    if (!Has(options, "layers")) Throw(env, "BAD_ARGUMENT", "option layers (the critical layers) expected");
    opts->layers = ReadIntArray(env, options.Get("layers"), "layers");
    opts->core_experts = IntOption(env, options, "coreExperts", opts->core_experts);
    opts->steps = IntOption(env, options, "steps", opts->steps);
    opts->lr_start = static_cast<float>(NumberOption(env, options, "lrStart", opts->lr_start));
    opts->lr_end = static_cast<float>(NumberOption(env, options, "lrEnd", opts->lr_end));
    opts->final_loss = BoolOption(env, options, "finalLoss", opts->final_loss);
    std::shared_ptr<Model> model = state_->model;
    auto result = std::make_shared<C3poResult>();
    return ModelTask::Start(
        env, [model, omega, neighbours, opts, result] { *result = c3po_ngd(*model, *omega, *neighbours, *opts); },
        [result](Napi::Env env) -> Napi::Value { return C3poResultToJs(env, *result); });
  });
}

Napi::Value ModelWrap::Close(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return Guard(env, [&]() -> Napi::Value {
    if (!state_) return env.Undefined();
    for (auto& weak : state_->sessions) {
      if (auto session = weak.lock()) {
        std::lock_guard<std::mutex> lock(session->mu);
        session->closed = true;
        if (session->in_flight) {
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

// ---------------------------------------------------------------------------------------------------------------
// C3poPrefix.

Napi::Function PrefixWrap::Define(Napi::Env env) {
  return DefineClass(env, "C3poPrefix",
                     {InstanceMethod<&PrefixWrap::Release>("release"),
                      InstanceAccessor<&PrefixWrap::Tokens>("tokens"),
                      InstanceAccessor<&PrefixWrap::FirstLayer>("firstLayer")});
}

Napi::Object PrefixWrap::New(Napi::Env env, PrefixState state) {
  Napi::Object obj = env.GetInstanceData<AddonData>()->prefix_class.New({});
  Unwrap(obj)->state_ = std::move(state);
  return obj;
}

std::shared_ptr<routescope::C3poPrefix> PrefixWrap::From(Napi::Env env, const Napi::Value& value,
                                                         const std::string& what) {
  if (!value.IsObject() || !value.As<Napi::Object>().InstanceOf(env.GetInstanceData<AddonData>()->prefix_class.Value()))
    Throw(env, "BAD_ARGUMENT", what + " must be a prefix returned by c3poPrefix()");
  PrefixWrap* wrap = Unwrap(value.As<Napi::Object>());
  if (!wrap->state_.prefix) Throw(env, "BAD_ARGUMENT", what + " was released");
  return wrap->state_.prefix;
}

void PrefixWrap::DropState() {
  state_.prefix.reset();
  state_.model.reset();
}

Napi::Value PrefixWrap::Release(const Napi::CallbackInfo& info) {
  DropState();
  return info.Env().Undefined();
}

Napi::Value PrefixWrap::Tokens(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), state_.tokens); }

Napi::Value PrefixWrap::FirstLayer(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), state_.first_layer);
}

}  // namespace routescope::binding
