#include "output.hpp"

#include <Poco/JSON/Array.h>
#include <Poco/JSON/Stringifier.h>
#include <utf8.h>

#include <algorithm>
#include <sstream>

namespace berth::cli {
namespace {

std::size_t width(const std::string& s) {
  return utf8::is_valid(s.begin(), s.end()) ? static_cast<std::size_t>(utf8::distance(s.begin(), s.end())) : s.size();
}

std::string one_line(std::string s) {
  for (char& c : s) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = ' ';
  }
  return s;
}

}  // namespace

void print_table(std::ostream& out, const std::vector<std::string>& header,
                 const std::vector<std::vector<std::string>>& rows) {
  std::vector<std::size_t> widths(header.size(), 0);
  auto measure = [&](const std::vector<std::string>& row) {
    for (std::size_t i = 0; i < row.size() && i < widths.size(); ++i)
      widths[i] = std::max(widths[i], width(row[i]));
  };
  measure(header);
  for (const auto& row : rows)
    measure(row);
  auto print = [&](const std::vector<std::string>& row) {
    std::string line;
    for (std::size_t i = 0; i < row.size() && i < widths.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size()) line += std::string(widths[i] - width(row[i]) + 2, ' ');
    }
    out << line << '\n';
  };
  print(header);
  for (const auto& row : rows)
    print(row);
}

void print_fields(std::ostream& out, const std::vector<std::pair<std::string, std::string>>& fields) {
  std::size_t w = 0;
  for (const auto& [k, v] : fields)
    w = std::max(w, width(k));
  for (const auto& [k, v] : fields)
    out << k << ':' << std::string(w - width(k) + 1, ' ') << v << '\n';
}

std::string cell(const Poco::Dynamic::Var& value) {
  if (value.isEmpty()) return "-";
  if (value.type() == typeid(Poco::JSON::Array::Ptr)) {
    auto array = value.extract<Poco::JSON::Array::Ptr>();
    std::string out;
    for (std::size_t i = 0; i < array->size(); ++i)
      out += (i ? "," : "") + cell(array->get(i));
    return out.empty() ? "-" : out;
  }
  if (value.type() == typeid(Poco::JSON::Object::Ptr)) {
    auto object = value.extract<Poco::JSON::Object::Ptr>();
    std::string out;
    for (const auto& [k, v] : *object)
      out += (out.empty() ? "" : ",") + one_line(k) + "=" + cell(v);
    return out.empty() ? "-" : out;
  }
  if (value.isString()) return one_line(value.extract<std::string>());
  std::ostringstream json;
  Poco::JSON::Stringifier::stringify(value, json);
  return json.str();
}

std::string cell(const Poco::JSON::Object::Ptr& object, const std::string& key) {
  if (!object || !object->has(key)) return "-";
  return cell(object->get(key));
}

std::string first_line(const std::string& text, std::size_t max) {
  std::string line = text.substr(0, text.find('\n'));
  bool cut = line.size() < text.size() && text.find_first_not_of('\n', line.size()) != std::string::npos;
  if (!utf8::is_valid(line.begin(), line.end())) line = utf8::replace_invalid(line);
  if (width(line) > max) {
    auto it = line.begin();
    utf8::advance(it, max, line.end());
    line.erase(it, line.end());
    cut = true;
  }
  return one_line(line) + (cut ? "…" : "");
}

}  // namespace berth::cli
