// Hostile inputs: files that are not regular files, files over their size limit, links out of the model folder,
// JSON the standard refuses, and weights truncated while mapped. Each gives an Error naming the file, never a hang
// or a crash.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "model/model.h"
#include "model/safetensors.h"
#include "routescope/engine.h"
#include "test.h"
#include "util/files.h"
#include "util/json.h"

using namespace routescope;
namespace fs = std::filesystem;

namespace {

std::string parity_model(const char* name) { return rstest::fixtures_dir + "/parity/" + name + "/model"; }

// A fresh folder under the system temp dir, removed when the test ends.
struct TempDir {
  fs::path path;
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "routescope-hostile-XXXXXX").string();
    path = ::mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

// A copy of a fixture model in `tmp`/name.
std::string copy_model(const TempDir& tmp, const char* fixture, const char* name = "model") {
  const fs::path dir = tmp.path / name;
  fs::copy(parity_model(fixture), dir, fs::copy_options::recursive);
  return dir.string();
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << text;
}

// The Error a call throws (code and message), or empty when it does not throw.
struct Thrown {
  std::string code, message;
};
template <class F>
Thrown thrown(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return {e.code(), e.what()};
  } catch (const std::exception& e) {
    return {"std::exception", e.what()};
  }
  return {};
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

TEST("json: numbers with a leading zero and unpaired surrogates are refused; valid spellings still parse") {
  for (const char* bad : {"01", "-01", "[00]", "{\"a\": 007}", "0123.5", "\"\\udc00\"", "\"\\ud800\"", "\"\\ud800x\"",
                          "\"\\ud800\\u0041\""}) {
    const Thrown t = thrown([&] { Json::parse(bad); });
    CHECK_MSG(t.code == "std::exception", bad << " was accepted");
  }
  CHECK(contains(thrown([] { Json::parse("[1, 02]"); }).message, "leading zero"));
  for (const char* good : {"0", "-0", "0.5", "-0.25", "0e5", "10", "[0,1,100]", "\"\\ud83d\\ude00\""}) {
    const Thrown t = thrown([&] { Json::parse(good); });
    CHECK_MSG(t.code.empty(), good << " was refused: " << t.message);
  }
  CHECK(Json::parse("\"\\ud83d\\ude00\"").as_string() == "\xF0\x9F\x98\x80");
}

TEST("files: FIFOs, devices and folders are refused at once; each kind has a size limit") {
  TempDir tmp;
  const std::string fifo = (tmp.path / "fifo.json").string();
  CHECK(::mkfifo(fifo.c_str(), 0600) == 0);
  auto t0 = std::chrono::steady_clock::now();
  Thrown t = thrown([&] { read_text_file(fifo, kConfigFile, "BAD_CONFIG"); });
  CHECK_MSG(contains(t.message, fifo + ": a FIFO (named pipe), not a regular file"), t.message);
  CHECK(seconds_since(t0) < 5);
  t = thrown([&] { read_text_file("/dev/zero", kConfigFile, "BAD_CONFIG"); });
  CHECK_MSG(contains(t.message, "/dev/zero: a character device, not a regular file"), t.message);
  t = thrown([&] { read_text_file(tmp.path.string(), kConfigFile, "BAD_CONFIG"); });
  CHECK_MSG(contains(t.message, "a folder, not a regular file"), t.message);
  const std::string big = (tmp.path / "config.json").string();
  write_file(big, std::string(kConfigFile.max_bytes + 1, ' '));
  t = thrown([&] { read_text_file(big, kConfigFile, "BAD_CONFIG"); });
  CHECK_MSG(t.code == "BAD_CONFIG" && contains(t.message, "over the 1 MiB limit for config.json"), t.message);
  write_file(big, std::string(kConfigFile.max_bytes, ' '));
  CHECK(read_text_file(big, kConfigFile, "BAD_CONFIG").size() == kConfigFile.max_bytes);
  t = thrown([&] { MappedFile m(fifo); });
  CHECK_MSG(t.code == "BAD_CHECKPOINT" && contains(t.message, "FIFO"), t.message);
}

TEST("checkpoint: a FIFO or /dev/zero in place of any file of the model folder is an error, not a hang") {
  TempDir tmp;
  struct Case {
    const char* fixture;
    const char* file;
    bool fifo;
  };
  const Case cases[] = {
      {"mixtral-perexpert-f32", "config.json", true},
      {"mixtral-perexpert-f32", "generation_config.json", true},
      {"mixtral-perexpert-f32", "model.safetensors", true},
      {"mixtral-perexpert-f16-sharded", "model.safetensors.index.json", true},
      {"mixtral-perexpert-f16-sharded", "model-00001-of-00002.safetensors", true},
      {"mixtral-perexpert-f32", "config.json", false},
      {"mixtral-perexpert-f32", "generation_config.json", false},
      {"mixtral-perexpert-f32", "model.safetensors", false},
      {"mixtral-perexpert-f16-sharded", "model.safetensors.index.json", false},
  };
  int n = 0;
  for (const Case& c : cases) {
    const std::string name = "m" + std::to_string(n++);
    const std::string dir = copy_model(tmp, c.fixture, name.c_str());
    const std::string file = dir + "/" + c.file;
    fs::remove(file);
    if (c.fifo) CHECK(::mkfifo(file.c_str(), 0600) == 0);
    else fs::create_symlink("/dev/zero", file);
    const auto t0 = std::chrono::steady_clock::now();
    const Thrown t = thrown([&] { Model::load(dir, {1, "cpu"}); });
    CHECK_MSG(contains(t.message, file + ": ") && contains(t.message, "not a regular file"),
              c.file << (c.fifo ? " (FIFO)" : " (/dev/zero)") << ": " << t.message);
    CHECK_MSG(seconds_since(t0) < 5, c.file << " took " << seconds_since(t0) << " s");
  }
}

TEST("checkpoint: a broken generation_config.json is an error (it would silently lose EOS ids)") {
  TempDir tmp;
  const std::string dir = copy_model(tmp, "mixtral-perexpert-f32");
  write_file(dir + "/generation_config.json", "{\"eos_token_id\": [2, 01]}");
  Thrown t = thrown([&] { Model::load(dir, {1, "cpu"}); });
  CHECK_MSG(t.code == "BAD_CONFIG" && contains(t.message, "generation_config.json: invalid JSON"), t.message);
  write_file(dir + "/generation_config.json", "{\"eos_token_id\": \"2\"}");
  t = thrown([&] { Model::load(dir, {1, "cpu"}); });
  CHECK_MSG(contains(t.message, "generation_config.json: \"eos_token_id\" must be token ids"), t.message);
  write_file(dir + "/generation_config.json", "{\"eos_token_id\": [2, 5]}");
  auto model = Model::load(dir, {1, "cpu"});
  CHECK(model->info().eos_token_ids.size() >= 2);
}

TEST("checkpoint: weights or config linked from outside the model folder are refused (the HF cache layout is not)") {
  TempDir tmp;
  const std::string dir = copy_model(tmp, "mixtral-perexpert-f32");
  const std::string outside = (tmp.path / "elsewhere.safetensors").string();
  fs::rename(dir + "/model.safetensors", outside);
  fs::create_symlink(outside, dir + "/model.safetensors");
  Thrown t = thrown([&] { Model::load(dir, {1, "cpu"}); });
  CHECK_MSG(t.code == "BAD_CHECKPOINT" && contains(t.message, dir + "/model.safetensors: links to ") &&
                contains(t.message, "outside the model folder"),
            t.message);
  // Relative links that stay inside are fine.
  fs::remove(dir + "/model.safetensors");
  fs::create_directory(dir + "/weights");
  fs::rename(outside, dir + "/weights/model.safetensors");
  fs::create_symlink("weights/model.safetensors", dir + "/model.safetensors");
  CHECK(thrown([&] { Model::load(dir, {1, "cpu"}); }).message.empty());
  // config.json too.
  fs::rename(dir + "/config.json", tmp.path / "config.json");
  fs::create_symlink(tmp.path / "config.json", dir + "/config.json");
  t = thrown([&] { Model::load(dir, {1, "cpu"}); });
  CHECK_MSG(contains(t.message, dir + "/config.json: links to "), t.message);
  // Hugging Face hub cache: models--x/snapshots/<rev>/<file> -> ../../blobs/<hash>.
  const fs::path repo = tmp.path / "models--org--tiny";
  fs::create_directories(repo / "snapshots" / "abc123");
  fs::create_directories(repo / "blobs");
  fs::copy(parity_model("mixtral-perexpert-f32") + "/config.json", repo / "blobs" / "1111");
  fs::copy(parity_model("mixtral-perexpert-f32") + "/model.safetensors", repo / "blobs" / "2222");
  fs::create_symlink("../../blobs/1111", repo / "snapshots" / "abc123" / "config.json");
  fs::create_symlink("../../blobs/2222", repo / "snapshots" / "abc123" / "model.safetensors");
  t = thrown([&] { Model::load((repo / "snapshots" / "abc123").string(), {1, "cpu"}); });
  CHECK_MSG(t.message.empty(), t.message);
}

TEST("checkpoint: mapped weights truncated while loaded give MODEL_CHANGED at the next call, not SIGBUS") {
  TempDir tmp;
  const std::string dir = copy_model(tmp, "mixtral-perexpert-f32");
  auto model = Model::load(dir, {1, "cpu", "fp32", "mapped"});
  CHECK_MSG(model->info().weights == "mapped", model->info().weights);
  auto session = model->create_session();
  session->forward({1, 2, 3}, Patch{}, LogitsMode::Last);
  const std::string file = dir + "/model.safetensors";
  CHECK(::truncate(file.c_str(), 4096) == 0);
  const Thrown t = thrown([&] { session->forward({4}, Patch{}, LogitsMode::Last); });
  CHECK_MSG(t.code == "MODEL_CHANGED" && contains(t.message, file + ": the model file changed while it was in use"),
            t.code << " " << t.message);
}

TEST("checkpoint: resident weights give the mapped model's logits, and a model file changed afterwards does not matter") {
  TempDir tmp;
  const std::string dir = copy_model(tmp, "mixtral-perexpert-f32");
  auto mapped = Model::load(dir, {1, "cpu", "fp32", "mapped"});
  auto resident = Model::load(dir, {1, "cpu", "fp32", "resident"});
  CHECK_MSG(resident->info().weights == "resident", resident->info().weights);
  const std::string chosen = Model::load(dir, {1, "cpu"})->info().weights;  // auto: a small model fits in memory
  CHECK_MSG(chosen == "resident", chosen);
  auto ms = mapped->create_session();
  auto a = ms->forward({1, 2, 3}, Patch{}, LogitsMode::All).logits;
  auto a4 = ms->forward({4}, Patch{}, LogitsMode::All).logits;
  a.insert(a.end(), a4.begin(), a4.end());
  auto session = resident->create_session();
  auto b = session->forward({1, 2, 3}, Patch{}, LogitsMode::All).logits;
  const std::string file = dir + "/model.safetensors";
  CHECK(::truncate(file.c_str(), 4096) == 0);
  auto c = session->forward({4}, Patch{}, LogitsMode::All).logits;  // reads only the copy: no MODEL_CHANGED
  b.insert(b.end(), c.begin(), c.end());
  CHECK(a.size() == b.size());
  CHECK(a == b);  // the same bytes, the same kernels: bit for bit
}

TEST("checkpoint: resident loading refuses a file that is too short, and an unknown weights choice") {
  TempDir tmp;
  const std::string dir = copy_model(tmp, "mixtral-perexpert-f32");
  Thrown t = thrown([&] { Model::load(dir, {1, "cpu", "fp32", "everywhere"}); });
  CHECK_MSG(t.code == "BAD_ARGUMENT" && contains(t.message, "weights must be auto, mapped or resident"), t.message);
  const std::string file = dir + "/model.safetensors";
  CHECK(::truncate(file.c_str(), 4096) == 0);
  t = thrown([&] { Model::load(dir, {1, "cpu", "fp32", "resident"}); });
  CHECK_MSG(t.code == "BAD_CHECKPOINT" && contains(t.message, file), t.code << " " << t.message);
}

TEST("checkpoint: a SIGBUS inside mapped weights ends the process with one line naming the file, exit 1") {
  TempDir tmp;
  const std::string file = (tmp.path / "weights.bin").string();
  write_file(file, std::string(1 << 16, 'x'));
  int pipe_fds[2];
  CHECK(::pipe(pipe_fds) == 0);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(pipe_fds[1], STDERR_FILENO);
    MappedFile m(file);
    if (::truncate(file.c_str(), 0) != 0) ::_exit(3);
    volatile uint8_t sink = m.data()[(1 << 16) - 1];  // the page is gone: SIGBUS
    (void)sink;
    ::_exit(2);
  }
  ::close(pipe_fds[1]);
  std::string err;
  char buf[512];
  for (ssize_t n; (n = ::read(pipe_fds[0], buf, sizeof buf)) > 0;) err.append(buf, static_cast<size_t>(n));
  ::close(pipe_fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  CHECK_MSG(WIFEXITED(status) && WEXITSTATUS(status) == 1,
            "status " << (WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status)));
  CHECK_MSG(err == "routescope: " + file + ": the model file changed while it was in use (truncated while mapped)\n",
            err);
}

TEST("safetensors: parse_safetensors checks the header without touching the data (zero-copy views)") {
  // An 8-byte length, a header, and data: views must point into the caller's buffer.
  const std::string header = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
  std::string file(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(&file[0], &n, 8);
  file += header + std::string(8, '\1');
  const auto* bytes = reinterpret_cast<const uint8_t*>(file.data());
  const auto tensors = parse_safetensors(bytes, file.size(), "mem");
  CHECK(tensors.at("a").data == bytes + 8 + header.size());
  // data_offsets starting at -8, a number with a leading zero: refused with the file's name.
  for (const char* bad : {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-8,0]}}",
                          "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,08]}}"}) {
    std::string f(8, '\0');
    const uint64_t len = std::strlen(bad);
    std::memcpy(&f[0], &len, 8);
    f += std::string(bad) + std::string(8, '\1');
    const Thrown t = thrown([&] { parse_safetensors(reinterpret_cast<const uint8_t*>(f.data()), f.size(), "mem"); });
    CHECK_MSG(t.code == "BAD_CHECKPOINT" && t.message.rfind("mem: ", 0) == 0, bad << ": " << t.message);
  }
}
