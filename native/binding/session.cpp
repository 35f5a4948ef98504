// The JS Session: forward, generate, grad, generateRerouted, routingHeadroom and meanHidden as promises over engine calls on a
// worker thread; reset, truncate, cancel and position synchronously.
#include "wrap.h"

namespace routescope::binding {

Napi::Function SessionWrap::Define(Napi::Env env) {
  return DefineClass(env, "Session",
                     {InstanceMethod<&SessionWrap::Forward>("forward"),
                      InstanceMethod<&SessionWrap::Generate>("generate"),
                      InstanceMethod<&SessionWrap::Grad>("grad"),
                      InstanceMethod<&SessionWrap::GenerateRerouted>("generateRerouted"),
                      InstanceMethod<&SessionWrap::MeanHidden>("meanHidden"),
                      InstanceMethod<&SessionWrap::RoutingHeadroom>("routingHeadroom"),
                      InstanceMethod<&SessionWrap::Reset>("reset"),
                      InstanceMethod<&SessionWrap::Truncate>("truncate"),
                      InstanceMethod<&SessionWrap::Cancel>("cancel"),
                      InstanceAccessor<&SessionWrap::Position>("position")});
}

Napi::Object SessionWrap::New(Napi::Env env, std::shared_ptr<SessionState> state) {
  Napi::Object obj = env.GetInstanceData<AddonData>()->session_class.New({});
  Unwrap(obj)->state_ = std::move(state);
  return obj;
}

template <typename Prepare>
Napi::Value SessionWrap::Async(const Napi::CallbackInfo& info, Prepare prepare) {
  Napi::Env env = info.Env();
  try {
    if (!state_) Throw(env, "CLOSED", "session is not initialised");
    Plan plan = prepare(env);
    {
      std::lock_guard<std::mutex> lock(state_->mu);
      if (state_->closed || !state_->session) Throw(env, "CLOSED", "the model was closed");
      state_->session->reserve();  // BUSY while another call holds it
      state_->in_flight = true;
    }
    try {
      plan.call->PlanRouting(env, plan.first_rows, plan.decode_rows);
    } catch (...) {
      state_->CallDone();
      throw;
    }
    return Call::Start(env, std::move(plan.call), std::move(plan.work), std::move(plan.resolve));
  } catch (...) {
    return RejectedPromise(env, std::current_exception());
  }
}

SessionWrap::Inputs SessionWrap::ReadInputs(Napi::Env env, const Napi::CallbackInfo& info, const char* method,
                                            const char* tokens_name, bool options_required) {
  if (info.Length() < 1)
    Throw(env, "BAD_ARGUMENT", std::string(method) + "(" + tokens_name + ", options): " + tokens_name + " expected");
  Inputs in;
  in.tokens = std::make_shared<std::vector<int>>(ReadIntArray(env, info[0], tokens_name));
  in.options = OptionsObject(env, info, 1, options_required);
  in.patch = std::make_shared<Patch>(ReadPatch(env, in.options, state_->info));
  return in;
}

template <typename Change>
Napi::Value SessionWrap::WhileIdle(Napi::Env env, Change change) {
  return Guard(env, [&]() -> Napi::Value {
    if (!state_) Throw(env, "CLOSED", "session is not initialised");
    std::lock_guard<std::mutex> lock(state_->mu);
    if (state_->closed || !state_->session) Throw(env, "CLOSED", "the model was closed");
    change(*state_->session);
    state_->position.store(state_->session->position());
    return env.Undefined();
  });
}

Napi::Value SessionWrap::Forward(const Napi::CallbackInfo& info) {
  return Async(info, [&](Napi::Env env) -> Plan {
    Inputs in = ReadInputs(env, info, "forward", "tokens", false);
    const Napi::Object& options = in.options;
    const std::string mode_name = StringOption(env, options, "logits", "last");
    LogitsMode mode = LogitsMode::Last;
    if (mode_name == "all") mode = LogitsMode::All;
    else if (mode_name == "none") mode = LogitsMode::None;
    else if (mode_name != "last") Throw(env, "BAD_ARGUMENT", "option logits must be 'last', 'all' or 'none'");
    const int embed_layer = Has(options, "embedLayer") ? NonNegativeInt(env, options.Get("embedLayer"), "option embedLayer") : -1;
    auto result = std::make_shared<ForwardResult>();
    return {std::make_unique<Call>(env, state_, CallbackOption(env, options, "onLayer"), Napi::Function()),
            [tokens = in.tokens, patch = in.patch, mode, embed_layer, result](Call& c) {
              *result = c.session().forward(*tokens, *patch, mode, [&c](const LayerRouting& r) { c.EmitLayer(r); }, embed_layer);
            },
            [result](Napi::Env env) -> Napi::Value {
              Napi::Object o = Napi::Object::New(env);
              o.Set("logits", ToFloat32Array(env, result->logits));
              o.Set("rows", result->rows);
              if (!result->mean_hidden.empty()) o.Set("embedding", ToFloat32Array(env, result->mean_hidden));
              return o;
            },
            static_cast<int>(in.tokens->size())};
  });
}

Napi::Value SessionWrap::Generate(const Napi::CallbackInfo& info) {
  return Async(info, [&](Napi::Env env) -> Plan {
    Inputs in = ReadInputs(env, info, "generate", "prompt", false);
    const Napi::Object& options = in.options;
    auto opts = std::make_shared<SampleOptions>(ReadSampleOptions(env, options));
    auto generated = std::make_shared<std::vector<int>>();
    return {std::make_unique<Call>(env, state_, CallbackOption(env, options, "onLayer"),
                                   CallbackOption(env, options, "onToken")),
            [prompt = in.tokens, patch = in.patch, opts, generated](Call& c) {
              *generated = c.session().generate(*prompt, *patch, *opts, [&c](int t) { return c.EmitToken(t); },
                                                [&c](const LayerRouting& r) { c.EmitLayer(r); });
            },
            [generated](Napi::Env env) -> Napi::Value {
              Napi::Object o = Napi::Object::New(env);
              o.Set("tokens", ToInt32Array(env, *generated));
              return o;
            },
            static_cast<int>(in.tokens->size()), 1};
  });
}

Napi::Value SessionWrap::Grad(const Napi::CallbackInfo& info) {
  return Async(info, [&](Napi::Env env) -> Plan {
    Inputs in = ReadInputs(env, info, "grad", "tokens", true);
    const Napi::Object& options = in.options;
    auto req = std::make_shared<GradRequest>();
    if (Has(options, "layers")) req->bias_layers = ReadIntArray(env, options.Get("layers"), "layers");
    if (Has(options, "target")) {
      std::vector<int> target = ReadIntArray(env, options.Get("target"), "target");
      if (target.size() != 2) Throw(env, "BAD_ARGUMENT", "option target must be [start, end]");
      req->target_start = target[0];
      req->target_end = target[1];
    }
    const bool want_mix = Has(options, "mix");
    if (want_mix) {
      Napi::Value mix_value = options.Get("mix");
      if (!mix_value.IsObject()) Throw(env, "BAD_ARGUMENT", "option mix must be {layer, position, logits}");
      Napi::Object mix = mix_value.As<Napi::Object>();
      req->mix_layer = IntOption(env, mix, "layer", -1);
      req->mix_position = IntOption(env, mix, "position", -1);
      if (!Has(mix, "logits")) Throw(env, "BAD_ARGUMENT", "option mix.logits expected");
      req->mix_logits = ReadFloatArray(env, mix.Get("logits"), "mix.logits");
    }
    auto result = std::make_shared<GradResult>();
    return {std::make_unique<Call>(env, state_, Napi::Function(), Napi::Function()),
            [tokens = in.tokens, patch = in.patch, req, result](Call& c) {
              *result = c.session().grad(*tokens, *patch, *req);
            },
            [result, want_mix](Napi::Env env) -> Napi::Value {
              Napi::Object o = Napi::Object::New(env);
              o.Set("loss", result->loss);
              o.Set("biasGrad", LayerMapToJs(env, result->bias_grad));
              if (want_mix) o.Set("mixGrad", ToFloat32Array(env, result->mix_grad));
              return o;
            }};
  });
}

Napi::Value SessionWrap::GenerateRerouted(const Napi::CallbackInfo& info) {
  return Async(info, [&](Napi::Env env) -> Plan {
    Inputs in = ReadInputs(env, info, "generateRerouted", "prompt", true);
    const Napi::Object& options = in.options;
    auto opts = std::make_shared<SampleOptions>(ReadSampleOptions(env, options));
    auto ropts = std::make_shared<RerouteOptions>(ReadRerouteOptions(env, options));
    auto result = std::make_shared<RerouteResult>();
    return {std::make_unique<Call>(env, state_, Napi::Function(), CallbackOption(env, options, "onToken"),
                                   CallbackOption(env, options, "onRound")),
            [prompt = in.tokens, patch = in.patch, opts, ropts, result](Call& c) {
              *result = generate_rerouted(c.session(), *prompt, *patch, *opts, *ropts,
                                          [&c](int t) { return c.EmitToken(t); },
                                          [&c](const RerouteRound& r) { c.EmitRound(r); });
            },
            [result](Napi::Env env) -> Napi::Value { return RerouteResultToJs(env, *result); }};
  });
}

Napi::Value SessionWrap::RoutingHeadroom(const Napi::CallbackInfo& info) {
  return Async(info, [&](Napi::Env env) -> Plan {
    Inputs in = ReadInputs(env, info, "routingHeadroom", "prompt", true);
    const Napi::Object& options = in.options;
    auto opts = std::make_shared<HeadroomOptions>();
    if (!Has(options, "label")) Throw(env, "BAD_ARGUMENT", "option label (the correct next token) expected");
    opts->label = IntOption(env, options, "label", -1);
    if (Has(options, "options")) opts->options = ReadIntArray(env, options.Get("options"), "options");
    if (Has(options, "layers")) opts->layers = ReadIntArray(env, options.Get("layers"), "layers");
    opts->joint = BoolOption(env, options, "joint", opts->joint);
    opts->candidates = IntOption(env, options, "candidates", opts->candidates);
    opts->moves = IntOption(env, options, "moves", opts->moves);
    opts->steps = IntOption(env, options, "steps", opts->steps);
    opts->lr_start = static_cast<float>(NumberOption(env, options, "lrStart", opts->lr_start));
    opts->lr_end = static_cast<float>(NumberOption(env, options, "lrEnd", opts->lr_end));
    auto result = std::make_shared<HeadroomResult>();
    return {std::make_unique<Call>(env, state_, Napi::Function(), Napi::Function()),
            [prompt = in.tokens, opts, result](Call& c) { *result = routing_headroom(c.session(), *prompt, *opts); },
            [result](Napi::Env env) -> Napi::Value { return HeadroomResultToJs(env, *result); }};
  });
}

Napi::Value SessionWrap::MeanHidden(const Napi::CallbackInfo& info) {
  return Async(info, [&](Napi::Env env) -> Plan {
    if (info.Length() < 2) Throw(env, "BAD_ARGUMENT", "meanHidden(tokens, layer): tokens and layer expected");
    auto tokens = std::make_shared<std::vector<int>>(ReadIntArray(env, info[0], "tokens"));
    if (!info[1].IsNumber()) Throw(env, "BAD_ARGUMENT", "meanHidden(tokens, layer): layer must be an integer");
    const int layer = NonNegativeInt(env, info[1], "meanHidden(tokens, layer): layer");
    auto result = std::make_shared<std::vector<float>>();
    return {std::make_unique<Call>(env, state_, Napi::Function(), Napi::Function()),
            [tokens, layer, result](Call& c) { *result = c.session().mean_hidden(*tokens, layer); },
            [result](Napi::Env env) -> Napi::Value { return ToFloat32Array(env, *result); }};
  });
}

Napi::Value SessionWrap::Reset(const Napi::CallbackInfo& info) {
  return WhileIdle(info.Env(), [](Session& s) { s.reset(); });
}

Napi::Value SessionWrap::Truncate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) Throw(env, "BAD_ARGUMENT", "truncate(position): a position expected");
  const int position = NonNegativeInt(env, info[0], "truncate(position): position");
  return WhileIdle(env, [position](Session& s) { s.truncate(position); });
}

Napi::Value SessionWrap::Cancel(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return Guard(env, [&]() -> Napi::Value {
    if (!state_) return env.Undefined();
    std::lock_guard<std::mutex> lock(state_->mu);
    if (state_->session) state_->session->cancel();  // the engine ignores a cancel while idle
    return env.Undefined();
  });
}

Napi::Value SessionWrap::Position(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), state_ ? state_->position.load() : 0);
}

}  // namespace routescope::binding
