#include "util/json.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <unordered_set>

namespace routescope {

class JsonParser {
 public:
  explicit JsonParser(const std::string& s) : s_(s) {}
  Json parse_document() {
    skip_ws();
    Json v = parse_value(0);
    skip_ws();
    if (i_ != s_.size()) fail("unexpected trailing characters");
    return v;
  }

 private:
  const std::string& s_;
  size_t i_ = 0;

  [[noreturn]] void fail(const std::string& what) const {
    throw std::runtime_error("invalid JSON: " + what + " at offset " + std::to_string(i_));
  }
  void skip_ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\n' || s_[i_] == '\r' || s_[i_] == '\t')) ++i_;
  }
  char peek() const { return i_ < s_.size() ? s_[i_] : '\0'; }
  void expect(char c) {
    if (peek() != c) fail(std::string("expected '") + c + "'");
    ++i_;
  }
  Json parse_value(int depth) {
    if (depth > 128) fail("nesting too deep");
    char c = peek();
    if (c == '{') return parse_object(depth);
    if (c == '[') return parse_array(depth);
    if (c == '"') {
      Json v;
      v.type_ = Json::Type::String;
      v.string_ = parse_string();
      return v;
    }
    if (c == 't' || c == 'f' || c == 'n') return parse_literal();
    if (c == '-' || (c >= '0' && c <= '9')) return parse_number();
    if (c == 'N' || c == 'I') return parse_literal();  // NaN / Infinity as Python's json writes them
    fail(i_ >= s_.size() ? "unexpected end of input" : "unexpected character");
  }
  Json parse_literal() {
    Json v;
    auto match = [&](const char* w) {
      size_t n = std::char_traits<char>::length(w);
      if (s_.compare(i_, n, w) == 0) {
        i_ += n;
        return true;
      }
      return false;
    };
    if (match("true")) {
      v.type_ = Json::Type::Bool;
      v.bool_ = true;
    } else if (match("false")) {
      v.type_ = Json::Type::Bool;
    } else if (match("null")) {
    } else if (match("NaN")) {
      v.type_ = Json::Type::Number;
      v.number_ = NAN;
    } else if (match("Infinity")) {
      v.type_ = Json::Type::Number;
      v.number_ = INFINITY;
    } else {
      fail("unknown literal");
    }
    return v;
  }
  Json parse_number() {
    size_t start = i_;
    if (peek() == '-') {
      ++i_;
      if (s_.compare(i_, 8, "Infinity") == 0) {
        i_ += 8;
        Json v;
        v.type_ = Json::Type::Number;
        v.number_ = -INFINITY;
        return v;
      }
    }
    if (!(peek() >= '0' && peek() <= '9')) fail("bad number");
    if (peek() == '0' && i_ + 1 < s_.size() && s_[i_ + 1] >= '0' && s_[i_ + 1] <= '9')
      fail("number with a leading zero");
    while (peek() >= '0' && peek() <= '9') ++i_;
    if (peek() == '.') {
      ++i_;
      if (!(peek() >= '0' && peek() <= '9')) fail("bad number");
      while (peek() >= '0' && peek() <= '9') ++i_;
    }
    if (peek() == 'e' || peek() == 'E') {
      ++i_;
      if (peek() == '+' || peek() == '-') ++i_;
      if (!(peek() >= '0' && peek() <= '9')) fail("bad number");
      while (peek() >= '0' && peek() <= '9') ++i_;
    }
    Json v;
    v.type_ = Json::Type::Number;
    v.string_ = s_.substr(start, i_ - start);
    v.number_ = std::strtod(v.string_.c_str(), nullptr);
    return v;
  }
  static void put_utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
      out += char(cp);
    } else if (cp < 0x800) {
      out += char(0xC0 | (cp >> 6));
      out += char(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += char(0xE0 | (cp >> 12));
      out += char(0x80 | ((cp >> 6) & 0x3F));
      out += char(0x80 | (cp & 0x3F));
    } else {
      out += char(0xF0 | (cp >> 18));
      out += char(0x80 | ((cp >> 12) & 0x3F));
      out += char(0x80 | ((cp >> 6) & 0x3F));
      out += char(0x80 | (cp & 0x3F));
    }
  }
  uint32_t parse_hex4() {
    if (i_ + 4 > s_.size()) fail("bad \\u escape");
    uint32_t v = 0;
    for (int j = 0; j < 4; ++j) {
      char c = s_[i_++];
      v <<= 4;
      if (c >= '0' && c <= '9') v |= c - '0';
      else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
      else fail("bad \\u escape");
    }
    return v;
  }
  std::string parse_string() {
    expect('"');
    std::string out;
    while (true) {
      if (i_ >= s_.size()) fail("unterminated string");
      char c = s_[i_++];
      if (c == '"') break;
      if (static_cast<unsigned char>(c) < 0x20) fail("control character in string");
      if (c != '\\') {
        out += c;
        continue;
      }
      if (i_ >= s_.size()) fail("unterminated string");
      char e = s_[i_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          uint32_t cp = parse_hex4();
          if (cp >= 0xDC00 && cp < 0xE000) fail("unpaired \\u surrogate");
          if (cp >= 0xD800 && cp < 0xDC00) {
            if (s_.compare(i_, 2, "\\u") != 0) fail("unpaired \\u surrogate");
            i_ += 2;
            const uint32_t lo = parse_hex4();
            if (lo < 0xDC00 || lo >= 0xE000) fail("unpaired \\u surrogate");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          }
          put_utf8(out, cp);
          break;
        }
        default: fail("bad escape");
      }
    }
    return out;
  }
  Json parse_array(int depth) {
    expect('[');
    Json v;
    v.type_ = Json::Type::Array;
    skip_ws();
    if (peek() == ']') {
      ++i_;
      return v;
    }
    while (true) {
      skip_ws();
      v.array_.push_back(parse_value(depth + 1));
      skip_ws();
      if (peek() == ',') {
        ++i_;
        continue;
      }
      expect(']');
      return v;
    }
  }
  Json parse_object(int depth) {
    expect('{');
    Json v;
    v.type_ = Json::Type::Object;
    std::unordered_set<std::string> seen;
    skip_ws();
    if (peek() == '}') {
      ++i_;
      return v;
    }
    while (true) {
      skip_ws();
      std::string key = parse_string();
      if (!seen.insert(key).second) fail("duplicate key \"" + key + "\"");
      skip_ws();
      expect(':');
      skip_ws();
      Json value = parse_value(depth + 1);
      v.object_.emplace_back(std::move(key), std::move(value));
      skip_ws();
      if (peek() == ',') {
        ++i_;
        continue;
      }
      expect('}');
      return v;
    }
  }
};

Json Json::parse(const std::string& text) { return JsonParser(text).parse_document(); }

const Json* Json::find(const std::string& key) const {
  for (const auto& kv : object_)
    if (kv.first == key) return &kv.second;
  return nullptr;
}

namespace {
void dump_string(const std::string& s, std::string& out) {
  out += '"';
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20) {
      char buf[8];
      snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  out += '"';
}
void dump_value(const Json& v, std::string& out) {
  switch (v.type()) {
    case Json::Type::Null: out += "null"; break;
    case Json::Type::Bool: out += v.as_bool() ? "true" : "false"; break;
    case Json::Type::Number:
      if (!v.raw_number().empty()) out += v.raw_number();
      else {
        char buf[32];
        snprintf(buf, sizeof buf, "%.17g", v.as_number());
        out += buf;
      }
      break;
    case Json::Type::String: dump_string(v.as_string(), out); break;
    case Json::Type::Array:
      out += '[';
      for (size_t i = 0; i < v.items().size(); ++i) {
        if (i) out += ',';
        dump_value(v.items()[i], out);
      }
      out += ']';
      break;
    case Json::Type::Object: {
      out += '{';
      bool first = true;
      for (const auto& kv : v.members()) {
        if (!first) out += ',';
        first = false;
        dump_string(kv.first, out);
        out += ':';
        dump_value(kv.second, out);
      }
      out += '}';
      break;
    }
  }
}
}  // namespace

std::string Json::dump() const {
  std::string out;
  dump_value(*this, out);
  return out;
}

bool Json::as_int64(int64_t& out) const {
  if (type_ != Type::Number || !std::isfinite(number_)) return false;
  if (number_ != std::floor(number_) || std::fabs(number_) > 9.007199254740992e15) return false;
  out = static_cast<int64_t>(number_);
  return true;
}

}  // namespace routescope
