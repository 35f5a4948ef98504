// The JS classes of the addon (extension/src/engine/native.ts mirrors them): Model, Session and C3poPrefix. Each
// wraps engine objects and converts arguments and results; the engine enforces the rules.
#pragma once
#include <napi.h>

#include <memory>
#include <string>
#include <vector>

#include "call.h"
#include "convert.h"

namespace routescope::binding {

// Per-environment class constructors (worker threads each load their own copy of the addon).
struct AddonData {
  Napi::FunctionReference model_class;
  Napi::FunctionReference session_class;
  Napi::FunctionReference prefix_class;
};

struct ModelState {
  std::shared_ptr<Model> model;  // null once closed
  ModelInfo info;                // a copy, readable after close
  std::vector<std::weak_ptr<SessionState>> sessions;
};

class ModelWrap : public Napi::ObjectWrap<ModelWrap> {
 public:
  static Napi::Function Define(Napi::Env env);
  static Napi::Object New(Napi::Env env, std::unique_ptr<Model> model);
  explicit ModelWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ModelWrap>(info) {}
  ~ModelWrap() override;

 private:
  Napi::Value Info(const Napi::CallbackInfo& info);
  Napi::Value CreateSession(const Napi::CallbackInfo& info);
  Napi::Value C3poPrefix(const Napi::CallbackInfo& info);
  Napi::Value C3poNgd(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  Model& Open(Napi::Env env);  // the model, or a CLOSED error
  // The frame of the asynchronous model calls: argument errors reject the promise rather than throw.
  template <typename Prepare>
  Napi::Value Async(const Napi::CallbackInfo& info, Prepare prepare);

  std::shared_ptr<ModelState> state_;
};

class SessionWrap : public Napi::ObjectWrap<SessionWrap> {
 public:
  static Napi::Function Define(Napi::Env env);
  static Napi::Object New(Napi::Env env, std::shared_ptr<SessionState> state);
  explicit SessionWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<SessionWrap>(info) {}

 private:
  Napi::Value Forward(const Napi::CallbackInfo& info);
  Napi::Value Generate(const Napi::CallbackInfo& info);
  Napi::Value Grad(const Napi::CallbackInfo& info);
  Napi::Value GenerateRerouted(const Napi::CallbackInfo& info);
  Napi::Value MeanHidden(const Napi::CallbackInfo& info);
  Napi::Value RoutingHeadroom(const Napi::CallbackInfo& info);
  Napi::Value Reset(const Napi::CallbackInfo& info);
  Napi::Value Truncate(const Napi::CallbackInfo& info);
  Napi::Value Cancel(const Napi::CallbackInfo& info);
  Napi::Value Position(const Napi::CallbackInfo& info);

  // An engine call ready to start once the session is reserved.
  struct Plan {
    std::unique_ptr<Call> call;
    Call::Work work;
    Call::Resolver resolve;
    int first_rows = 0, decode_rows = 0;  // the routing spans it streams (Call::PlanRouting)
  };
  // What the token-taking calls share: tokens (info[0], named tokens_name), the options object (info[1]) and the
  // patch it carries, validated against the model.
  struct Inputs {
    std::shared_ptr<std::vector<int>> tokens;
    Napi::Object options;
    std::shared_ptr<Patch> patch;
  };
  Inputs ReadInputs(Napi::Env env, const Napi::CallbackInfo& info, const char* method, const char* tokens_name,
                    bool options_required);
  // The frame of every session call: `prepare` converts the arguments; then the engine session is reserved and
  // the call starts. Argument errors, BUSY and CLOSED reject the promise rather than throw.
  template <typename Prepare>
  Napi::Value Async(const Napi::CallbackInfo& info, Prepare prepare);
  // Runs `change` on the idle session under its lock (the engine refuses while a call runs).
  template <typename Change>
  Napi::Value WhileIdle(Napi::Env env, Change change);

  std::shared_ptr<SessionState> state_;
};

// A reference item's prompt cached for C3PO. Holds the model so its weights stay mapped while the prefix exists.
struct PrefixState {
  std::shared_ptr<Model> model;
  std::shared_ptr<routescope::C3poPrefix> prefix;  // declared after model: destroyed first
  int tokens = 0;
  int first_layer = 0;
};

class PrefixWrap : public Napi::ObjectWrap<PrefixWrap> {
 public:
  static Napi::Function Define(Napi::Env env);
  static Napi::Object New(Napi::Env env, PrefixState state);
  // The prefix behind a JS value, or a BAD_ARGUMENT error naming `what`.
  static std::shared_ptr<routescope::C3poPrefix> From(Napi::Env env, const Napi::Value& value, const std::string& what);
  explicit PrefixWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<PrefixWrap>(info) {}
  ~PrefixWrap() override { DropState(); }

 private:
  // The engine frees a prefix's KV cache when the last reference goes; a running c3poNgd holds its own reference,
  // so releasing here never pulls state from under the engine.
  void DropState();
  Napi::Value Release(const Napi::CallbackInfo& info);
  Napi::Value Tokens(const Napi::CallbackInfo& info);
  Napi::Value FirstLayer(const Napi::CallbackInfo& info);

  PrefixState state_;
};

}  // namespace routescope::binding
