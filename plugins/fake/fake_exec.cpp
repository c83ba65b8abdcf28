// The fake driver's mini shell and mini Python (see fake_exec.h and README.md).
//
// One Interpreter runs one exec call. Internal exceptions unwind it: Interrupted (timeout, cancel, kill) and
// Exited (`exit N`, sys.exit, an uncaught Python error). run_process catches both, so only std::bad_alloc can
// leave this file, and the driver's call_guarded turns that into BERTH_INTERNAL.
#include "fake_exec.h"

#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <utility>

namespace berth::fake {
namespace {

constexpr berth_stream kStderr = BERTH_STREAM_STDERR;
constexpr berth_stream kStdout = BERTH_STREAM_STDOUT;

/** The process must stop now. */
struct Interrupted {
  Interruption why;
};
/** The current program ends with `code`. */
struct Exited {
  int code;
};
/** The fake cannot run this text; `message` says why. */
struct Unsupported {
  std::string message;
};
/** An uncaught Python exception, printed as a traceback. */
struct PythonError {
  std::string type;
  std::string message;
};

std::string_view trim(std::string_view text) {
  const size_t first = text.find_first_not_of(" \t\r\n");
  if (first == std::string_view::npos) return {};
  return text.substr(first, text.find_last_not_of(" \t\r\n") - first + 1);
}

bool is_name_char(char c, bool first) {
  return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (!first && c >= '0' && c <= '9');
}

/** Parses the whole of `text` as a number, or nothing. */
template <typename Number>
std::optional<Number> parse_number(std::string_view text) {
  Number value{};
  const char* end = text.data() + text.size();
  const auto [stop, error] = std::from_chars(text.data(), end, value);
  if (text.empty() || error != std::errc() || stop != end) return std::nullopt;
  return value;
}

/** A finite, non-negative number of seconds, as `sleep` and time.sleep take it. */
std::optional<double> parse_seconds(std::string_view text) {
  const std::optional<double> seconds = parse_number<double>(trim(text));
  if (!seconds || !std::isfinite(*seconds) || *seconds < 0) return std::nullopt;
  return seconds;
}

// --- mini shell -----------------------------------------------------------------------------------------------

/** How a statement depends on the status of the one before it (`;`/newline, `&&`, `||`). */
enum class Connector { kAlways, kAnd, kOr };

struct Statement {
  Connector connector = Connector::kAlways;
  std::vector<std::string> words;
  bool to_stderr = false;  // `>&2` or `1>&2`
};

/** Splits a script into statements of words: quotes, backslashes, $NAME / ${NAME}, `#` comments. */
class ScriptParser {
 public:
  ScriptParser(std::string_view script, const std::map<std::string, std::string>& env) : src_(script), env_(env) {}

  /** Throws Unsupported for syntax the fake does not have (pipes, file redirections, subshells...). */
  std::vector<Statement> parse() {
    statements_.emplace_back();
    while (pos_ < src_.size()) {
      const char c = src_[pos_];
      if (c == ' ' || c == '\t' || c == '\r') {
        end_word();
        ++pos_;
      } else if (c == '\n' || c == ';') {
        end_statement(Connector::kAlways, 1);
      } else if (at("&&")) {
        end_statement(Connector::kAnd, 2);
      } else if (at("||")) {
        end_statement(Connector::kOr, 2);
      } else if (at(">&2")) {
        if (!quoted_ && word_ == "1") in_word_ = false;  // `1>&2`: drop the "1"
        end_word();
        statements_.back().to_stderr = true;
        pos_ += 3;
      } else if (c == '#' && !in_word_) {
        pos_ = std::min(src_.find('\n', pos_), src_.size());
      } else if (std::string_view("|&<>()`").find(c) != std::string_view::npos) {
        throw Unsupported{std::string("unsupported shell syntax '") + c + "'"};
      } else if (c == '\'') {
        const size_t close = src_.find('\'', pos_ + 1);
        if (close == std::string_view::npos) throw Unsupported{"unterminated quote"};
        word_ += src_.substr(pos_ + 1, close - pos_ - 1);
        in_word_ = quoted_ = true;
        pos_ = close + 1;
      } else if (c == '"') {
        double_quoted();
      } else if (c == '\\') {
        if (pos_ + 1 < src_.size() && src_[pos_ + 1] != '\n') {  // a backslash before a newline joins the lines
          word_ += src_[pos_ + 1];
          in_word_ = quoted_ = true;
        }
        pos_ += 2;
      } else if (c == '$') {
        word_ += expand();
      } else {
        word_ += c;
        in_word_ = true;
        ++pos_;
      }
    }
    end_statement(Connector::kAlways, 0);
    return std::move(statements_);
  }

 private:
  bool at(std::string_view token) const { return src_.substr(pos_, token.size()) == token; }

  void end_word() {
    if (in_word_) statements_.back().words.push_back(word_);
    word_.clear();
    in_word_ = quoted_ = false;
  }

  void end_statement(Connector next, size_t length) {
    end_word();
    pos_ += length;
    if (statements_.back().words.empty()) {  // `a &&\n b` still means `a && b`
      if (next != Connector::kAlways) statements_.back().connector = next;
      return;
    }
    statements_.emplace_back().connector = next;
  }

  void double_quoted() {
    in_word_ = quoted_ = true;
    for (++pos_; pos_ < src_.size();) {
      const char c = src_[pos_];
      if (c == '"') {
        ++pos_;
        return;
      }
      if (c == '$') {
        word_ += expand();
      } else if (c == '\\' && pos_ + 1 < src_.size() &&
                 std::string_view("\"\\$").find(src_[pos_ + 1]) != std::string_view::npos) {
        word_ += src_[pos_ + 1];
        pos_ += 2;
      } else {
        word_ += c;
        ++pos_;
      }
    }
    throw Unsupported{"unterminated quote"};
  }

  /** At a '$': the value of $NAME or ${NAME} ("" if unset), or a literal "$". */
  std::string expand() {
    ++pos_;
    const bool braced = pos_ < src_.size() && src_[pos_] == '{';
    const size_t start = pos_ + (braced ? 1 : 0);
    size_t end = start;
    while (end < src_.size() && is_name_char(src_[end], end == start))
      ++end;
    if (end == start || (braced && (end == src_.size() || src_[end] != '}'))) {
      in_word_ = true;
      return "$";
    }
    pos_ = end + (braced ? 1 : 0);
    const auto it = env_.find(std::string(src_.substr(start, end - start)));
    if (it == env_.end() || it->second.empty()) return "";  // an empty unquoted expansion is no word at all
    in_word_ = true;
    return it->second;
  }

  std::string_view src_;
  const std::map<std::string, std::string>& env_;
  std::vector<Statement> statements_;
  size_t pos_ = 0;
  std::string word_;
  bool in_word_ = false;  // the current word exists, even if empty ("")
  bool quoted_ = false;   // part of it was quoted, so it cannot be an operator
};

// --- mini Python ---------------------------------------------------------------------------------------------

/** A mini-Python value: an int or a str (what assignments hold). */
struct PyValue {
  bool is_str = false;
  int64_t i = 0;
  std::string s;
  /** str() of the value (what print shows). */
  std::string str() const { return is_str ? s : std::to_string(i); }
  /** repr() of the value (what a notebook cell shows for a final expression). */
  std::string repr() const {
    if (!is_str) return std::to_string(i);
    std::string out = "'";
    for (char c : s) {
      if (c == '\\' || c == '\'') out += '\\';
      if (c == '\n') {
        out += "\\n";
        continue;
      }
      out += c;
    }
    return out + "'";
  }
};
using Variables = std::map<std::string, PyValue, std::less<>>;

/** Integer arithmetic with Python semantics: + - * // % unary +/-, parentheses, names of int variables. */
class IntExpression {
 public:
  explicit IntExpression(std::string_view text, const Variables* vars = nullptr) : text_(text), vars_(vars) {}

  /** Throws Unsupported (bad syntax, overflow) or PythonError (division by zero). */
  int64_t evaluate() {
    const int64_t value = sum();
    if (!eat("")) throw Unsupported{};
    return value;
  }

 private:
  int64_t sum() {
    int64_t value = product();
    while (true) {
      if (eat("+")) {
        value = add(value, product());
      } else if (eat("-")) {
        value = add(value, negate(product()));
      } else {
        return value;
      }
    }
  }

  int64_t product() {
    int64_t value = unary();
    while (true) {
      if (eat("**")) throw Unsupported{};
      if (eat("*")) {
        value = multiply(value, unary());
      } else if (eat("//")) {
        value = floor_divide(value, unary());
      } else if (eat("%")) {
        value = modulo(value, unary());
      } else {
        return value;
      }
    }
  }

  int64_t unary() {
    if (eat("-")) return negate(unary());
    if (eat("+")) return unary();
    if (eat("(")) {
      const int64_t value = sum();
      if (!eat(")")) throw Unsupported{};
      return value;
    }
    const size_t start = pos_;
    if (vars_ != nullptr && pos_ < text_.size() && is_name_char(text_[pos_], true)) {
      while (pos_ < text_.size() && is_name_char(text_[pos_], false))
        ++pos_;
      const std::string_view name = text_.substr(start, pos_ - start);
      const auto it = vars_->find(name);
      if (it == vars_->end()) throw PythonError{"NameError", "name '" + std::string(name) + "' is not defined"};
      if (it->second.is_str) throw Unsupported{};
      return it->second.i;
    }
    while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9')
      ++pos_;
    const std::optional<int64_t> literal = parse_number<int64_t>(text_.substr(start, pos_ - start));
    if (!literal) throw Unsupported{};
    return *literal;
  }

  static int64_t floor_divide(int64_t a, int64_t b) {
    if (b == 0) throw PythonError{"ZeroDivisionError", "integer division or modulo by zero"};
    if (a == INT64_MIN && b == -1) throw Unsupported{};
    const int64_t quotient = a / b;
    return (a % b != 0 && (a < 0) != (b < 0)) ? quotient - 1 : quotient;
  }

  static int64_t modulo(int64_t a, int64_t b) {
    if (b == 0) throw PythonError{"ZeroDivisionError", "integer modulo by zero"};
    if (b == -1) return 0;
    const int64_t remainder = a % b;
    return (remainder != 0 && (remainder < 0) != (b < 0)) ? remainder + b : remainder;
  }

  // Overflow is not Python (whose ints are unbounded) but undefined behaviour in C++: refuse it.
  static int64_t add(int64_t a, int64_t b) {
    int64_t sum = 0;
    if (__builtin_add_overflow(a, b, &sum)) throw Unsupported{};
    return sum;
  }

  static int64_t multiply(int64_t a, int64_t b) {
    int64_t product = 0;
    if (__builtin_mul_overflow(a, b, &product)) throw Unsupported{};
    return product;
  }

  static int64_t negate(int64_t a) {
    if (a == INT64_MIN) throw Unsupported{};
    return -a;
  }

  /** Skips spaces, then consumes `token` if it comes next ("" matches only at the end). */
  bool eat(std::string_view token) {
    while (pos_ < text_.size() && text_[pos_] == ' ')
      ++pos_;
    if (token.empty()) return pos_ == text_.size();
    if (text_.substr(pos_, token.size()) != token) return false;
    pos_ += token.size();
    return true;
  }

  std::string_view text_;
  const Variables* vars_;
  size_t pos_ = 0;
};

/** A whole-text Python string literal ('...' or "...", with \n \t \r \\ \' \" escapes), or nothing. */
std::optional<std::string> string_literal(std::string_view text) {
  if (text.size() < 2 || (text[0] != '\'' && text[0] != '"')) return std::nullopt;
  std::string value;
  for (size_t i = 1; i < text.size(); ++i) {
    const char c = text[i];
    if (c == text[0]) return i + 1 == text.size() ? std::optional(value) : std::nullopt;
    if (c != '\\' || i + 1 == text.size()) {
      value += c;
      continue;
    }
    const char escaped = text[++i];
    const std::string_view from = "nrt\\'\"", to = "\n\r\t\\'\"";
    const size_t known = from.find(escaped);
    value += known == std::string_view::npos ? std::string{'\\', escaped} : std::string(1, to[known]);
  }
  return std::nullopt;
}

/** A string literal, a variable, or an integer expression (over int variables). Throws Unsupported, PythonError. */
PyValue evaluate(std::string_view expression, const Variables& vars) {
  PyValue v;
  if (std::optional<std::string> text = string_literal(expression)) {
    v.is_str = true;
    v.s = *text;
    return v;
  }
  if (auto it = vars.find(expression); it != vars.end()) return it->second;
  v.i = IntExpression(expression, &vars).evaluate();
  return v;
}

/** A string literal's text or an integer expression's decimal value. */
std::string python_value(std::string_view expression, const Variables& vars = {}) {
  return evaluate(expression, vars).str();
}

/** The text between the parentheses of `name(...)` when `line` is exactly such a call. */
std::optional<std::string_view> call_arguments(std::string_view line, std::string_view name) {
  if (line.size() < name.size() + 2 || line.substr(0, name.size()) != name || line[name.size()] != '(' ||
      line.back() != ')') {
    return std::nullopt;
  }
  return line.substr(name.size() + 1, line.size() - name.size() - 2);
}

/** Splits call arguments at the commas that are outside strings and parentheses. */
std::vector<std::string_view> split_arguments(std::string_view text) {
  std::vector<std::string_view> parts;
  char quote = 0;
  int depth = 0;
  size_t start = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (quote != 0) {
      if (c == '\\')
        ++i;
      else if (c == quote)
        quote = 0;
    } else if (c == '\'' || c == '"') {
      quote = c;
    } else if (c == '(' || c == ')') {
      depth += c == '(' ? 1 : -1;
    } else if (c == ',' && depth == 0) {
      parts.push_back(trim(text.substr(start, i - start)));
      start = i + 1;
    }
  }
  if (!trim(text.substr(start)).empty()) parts.push_back(trim(text.substr(start)));  // `print(1,)` is fine
  return parts;
}

// --- the interpreter ------------------------------------------------------------------------------------------

class Interpreter {
 public:
  Interpreter(const Process& process, ProcessHost& host) : process_(process), host_(host) {}

  /** Runs one program (sh, python3, __fake or a builtin); its stdout goes to `out`. Returns the exit code. */
  int run(const std::vector<std::string>& argv, berth_stream out, int last_status = 0) {
    const std::string& program = argv.at(0);
    const std::string_view name = std::string_view(program).substr(program.rfind('/') + 1);  // "/bin/sh" -> "sh"
    const std::vector<std::string> args(argv.begin() + 1, argv.end());
    if (name == "sh" || name == "bash") return run_sh(args, out);
    if (name == "python3" || name == "python") return run_python(args, out);
    if (name == "__fake") return run_control(args, out);
    if (std::optional<int> status = run_builtin(name, args, out, last_status)) return *status;
    // A path names a script in the workspace: run it with the mini shell (its #! line is a comment to it).
    if (program.find('/') != std::string::npos) {
      if (auto script = resolve(program) ? host_.read_file(*resolve(program)) : std::nullopt) {
        std::vector<std::string> sh_args{"-c", *script};
        return run_sh(sh_args, out);
      }
    }
    emit(kStderr, "fake: " + program + ": command not found\n");
    return 127;
  }

  /** Throws Interrupted if the process must stop. */
  void check() {
    if (const Interruption why = host_.poll(); why != Interruption::kNone) throw Interrupted{why};
  }

 private:
  void emit(berth_stream stream, std::string_view data) {
    if (kernel_) {  // a cell's output travels in frames
      if (!data.empty()) frame(stream == kStderr ? "stderr" : "stdout", data);
      return;
    }
    if (const Interruption why = host_.write(stream, data); why != Interruption::kNone) throw Interrupted{why};
  }

  /** Writes a builtin's error message to stderr; returns exit code 1. */
  int fail(std::string_view message) {
    emit(kStderr, message);
    return 1;
  }

  void sleep(double ms) {
    if (const Interruption why = host_.sleep_ms(ms); why != Interruption::kNone) throw Interrupted{why};
  }

  /** Stdin is read once: whatever reads it first (cat, `python3 -`, `sh`) gets all of it. */
  /** A command-line path as a workspace-relative path, or nullopt if it leaves the workspace. */
  std::optional<std::string> resolve(const std::string& arg) const {
    std::string abs = arg.starts_with("/") ? arg : process_.pwd + "/" + arg;
    const std::string root = "/workspace";
    if (abs != root && !abs.starts_with(root + "/")) return std::nullopt;
    std::vector<std::string> parts;
    for (size_t i = root.size() + 1; i <= abs.size();) {
      size_t j = abs.find('/', i);
      if (j == std::string::npos) j = abs.size();
      std::string seg = abs.substr(i, j - i);
      if (seg == "..") {
        if (parts.empty()) return std::nullopt;
        parts.pop_back();
      } else if (!seg.empty() && seg != ".") {
        parts.push_back(seg);
      }
      i = j + 1;
    }
    std::string out;
    for (const auto& p : parts)
      out += (out.empty() ? "" : "/") + p;
    if (out.empty()) return std::nullopt;
    return out;
  }

  /** Reads one more piece of stdin into pending_; false at its end. */
  bool read_more() {
    if (stdin_eof_) return false;
    std::string chunk;
    if (const Interruption why = host_.read_stdin(chunk); why != Interruption::kNone) throw Interrupted{why};
    if (chunk.empty()) return stdin_eof_ = true, false;
    pending_ += chunk;
    return true;
  }

  /** All of stdin up to its end (what nothing has read yet). */
  std::string take_stdin() {
    while (read_more()) {
    }
    return std::exchange(pending_, std::string());
  }

  /** One line of stdin without its newline, or nothing at the end of stdin. */
  std::optional<std::string> read_line() {
    size_t newline = pending_.find('\n');
    while (newline == std::string::npos && read_more())
      newline = pending_.find('\n');
    if (newline == std::string::npos && pending_.empty()) return std::nullopt;
    std::string line = pending_.substr(0, newline);
    pending_.erase(0, newline == std::string::npos ? pending_.size() : newline + 1);
    return line;
  }

  /** `sh -c SCRIPT` (any flag word containing 'c' takes the script); `sh` or `sh -s` reads it from stdin. */
  int run_sh(const std::vector<std::string>& args, berth_stream out) {
    for (size_t i = 0; i < args.size(); ++i) {
      if (args[i].size() > 1 && args[i][0] == '-' && args[i].find('c') != std::string::npos) {
        const size_t script = i + 1 < args.size() && args[i + 1] == "--" ? i + 2 : i + 1;  // `sh -c -- SCRIPT`
        // `sh -c 'eval "$(/bin/cat)"'` is how the host sends a long command on stdin (no argv size limit): the mini
        // shell has no command substitution, so it recognises this form (and `cat` by name) and runs stdin. The
        // same text as a user's own command (`sh -c -- 'eval ...'`) reads stdin too, as a real shell would.
        if (script < args.size() && (args[script] == kEvalStdin || args[script] == kEvalStdinByName)) {
          return run_script(take_stdin(), out);
        }
        if (script < args.size()) return run_script(args[script], out);
        emit(kStderr, "sh: -c requires an argument\n");
        return 2;
      }
      if (args[i].empty() || args[i][0] != '-') {
        emit(kStderr, "sh: cannot open " + args[i] + ": No such file\n");
        return 2;
      }
    }
    // On a terminal with no script to run, the shell is interactive: a prompt, then one line at a time.
    if (args.empty() && host_.terminal_size()) return run_interactive(out);
    return run_script(take_stdin(), out);
  }

  /** An interactive shell: "$ ", one line, its output, until `exit` or the end of input (the terminal's ^D). */
  int run_interactive(berth_stream out) {
    int status = 0;
    for (;;) {
      emit(out, "$ ");
      const std::optional<std::string> line = read_line();
      if (!line || line->find('\x04') != std::string::npos) return status;
      status = run_script(*line, out);
      if (exited_) return status;
    }
  }

  static constexpr std::string_view kEvalStdin = "eval \"$(/bin/cat)\"";
  static constexpr std::string_view kEvalStdinByName = "eval \"$(cat)\"";

  int run_script(std::string_view script, berth_stream out) {
    std::vector<Statement> statements;
    try {
      statements = ScriptParser(script, process_.env).parse();
    } catch (const Unsupported& e) {
      emit(kStderr, "fake: " + e.message + "\n");
      return 2;
    }
    int status = 0;
    try {
      for (const Statement& statement : statements) {
        if (statement.words.empty() || (statement.connector == Connector::kAnd && status != 0) ||
            (statement.connector == Connector::kOr && status == 0)) {
          continue;
        }
        check();
        status = run(statement.words, statement.to_stderr ? kStderr : out, status);
      }
    } catch (const Exited& e) {
      exited_ = true;
      return e.code;
    }
    return status;
  }

  /** The shell builtins; nothing if `name` is not one. */
  std::optional<int> run_builtin(std::string_view name, const std::vector<std::string>& args, berth_stream out,
                                 int last_status) {
    if (name == "true" || name == "false") return name == "true" ? 0 : 1;
    if (name == "echo") {
      const bool newline = args.empty() || args[0] != "-n";
      std::string text;
      for (size_t i = newline ? 0 : 1; i < args.size(); ++i)
        text += (text.empty() ? "" : " ") + args[i];
      emit(out, newline ? text + "\n" : text);
      return 0;
    }
    if (name == "cat") {
      if (args.empty()) {  // streams: every piece of stdin goes out as it arrives
        do {
          if (!pending_.empty()) emit(out, std::exchange(pending_, std::string()));
        } while (read_more());
        return 0;
      }
      for (const auto& arg : args) {
        auto bytes = resolve(arg) ? host_.read_file(*resolve(arg)) : std::nullopt;
        if (!bytes) return fail("fake: cat: " + arg + ": No such file\n");
        emit(out, *bytes);
      }
      return 0;
    }
    if (name == "mkdir") {
      for (const auto& arg : args) {
        if (arg == "-p") continue;
        if (!resolve(arg) || !host_.make_dir(*resolve(arg))) return fail("fake: mkdir: cannot create " + arg + "\n");
      }
      return 0;
    }
    if (name == "pwd") {
      emit(out, process_.pwd + "\n");
      return 0;
    }
    if (name == "printenv") {
      int status = 0;
      std::string text;
      for (const auto& [key, value] : process_.env) {
        if (args.empty()) text += key + "=" + value + "\n";
      }
      for (const std::string& arg : args) {
        const auto it = process_.env.find(arg);
        if (it == process_.env.end())
          status = 1;
        else
          text += it->second + "\n";
      }
      emit(out, text);
      return status;
    }
    if (name == "exit") {
      if (args.empty()) throw Exited{last_status};
      const std::optional<int64_t> code = parse_number<int64_t>(args[0]);
      if (!code) emit(kStderr, "fake: exit: " + args[0] + ": numeric argument required\n");
      throw Exited{code ? static_cast<int>(*code & 0xff) : 2};
    }
    if (name == "sleep") {
      const std::optional<double> seconds = args.size() == 1 ? parse_seconds(args[0]) : std::nullopt;
      if (!seconds) return fail("fake: sleep: invalid time interval\n");
      sleep(*seconds * 1000);
      return 0;
    }
    if (name == "read") {  // consumes one line; the variable is not set (the mini shell expands when it parses)
      return read_line() ? 0 : 1;
    }
    if (name == "stty") {
      const auto size = host_.terminal_size();
      if (args.size() != 1 || args[0] != "size") return fail("fake: stty: only `stty size` is supported\n");
      if (!size) return fail("stty: 'standard input': Inappropriate ioctl for device\n");
      emit(out, std::to_string(size->first) + " " + std::to_string(size->second) + "\n");
      return 0;
    }
    if (name == "yes") {  // floods: WORD (default y) lines in 64 KiB chunks until something stops it
      const std::string line = (args.empty() ? std::string("y") : args[0]) + "\n";
      std::string chunk;
      while (chunk.size() + line.size() <= 64 * 1024)
        chunk += line;
      while (true) {
        check();
        emit(out, chunk);
      }
    }
    if (name == "hang") {
      sleep(-1);  // returns only by throwing Interrupted
      return 0;
    }
    if (name == "seq") {
      const std::optional<int64_t> first = args.size() == 2 ? parse_number<int64_t>(args[0]) : int64_t{1};
      const std::optional<int64_t> last = args.empty() ? std::nullopt : parse_number<int64_t>(args.back());
      if (!first || !last || args.size() > 2) return fail("fake: seq: invalid argument\n");
      for (int64_t i = *first; i <= *last; ++i) {  // one chunk per line, so streaming is visible
        check();
        emit(out, std::to_string(i) + "\n");
        if (i == INT64_MAX) break;
      }
      return 0;
    }
    return std::nullopt;
  }

  /** `__fake unavailable <ms>`, `__fake crash-session`, `__fake mkdirs DIR N`, `__fake fill PATH BYTES`, `__fake spec`.
   */
  int run_control(const std::vector<std::string>& args, berth_stream out) {
    const std::string command = args.empty() ? "" : args[0];
    if (command == "unavailable" && args.size() == 2 && parse_number<uint64_t>(args[1])) {
      host_.make_unavailable(*parse_number<uint64_t>(args[1]));
      return 0;
    }
    if (command == "crash-session" && args.size() == 1) {
      host_.crash_session();
      check();  // the session is gone, and this process with it
      return 137;
    }
    if (command == "mkdirs" && args.size() == 3 && parse_number<uint64_t>(args[2])) {
      // Many entries in one call (the memory probes list a directory of 100,000; the real engines use a shell loop).
      const auto dir = resolve(args[1]);
      if (!dir || !host_.make_dir(*dir)) return fail("fake: __fake mkdirs: cannot create " + args[1] + "\n");
      const uint64_t n = *parse_number<uint64_t>(args[2]);
      for (uint64_t i = 0; i < n; ++i) {
        if (i % 1024 == 0) check();
        if (!host_.make_dir(*dir + "/" + std::to_string(i))) return fail("fake: __fake mkdirs: cannot create\n");
      }
      return 0;
    }
    if (command == "fill" && args.size() == 3 && parse_number<uint64_t>(args[2])) {
      // Tenant code filling its disk (the disk-limit tests); the real engines use dd.
      const auto path = resolve(args[1]);
      if (!path || !host_.fill_file(*path, *parse_number<uint64_t>(args[2]))) {
        return fail("fake: __fake fill: cannot write " + args[1] + "\n");
      }
      return 0;
    }
    if (command == "spec" && args.size() == 1) {
      emit(out, host_.describe_session());
      return 0;
    }
    emit(kStderr, "fake: __fake: unknown control command\n");
    return 2;
  }

  /** `python3 -c CODE`, `python3 -` or `python3` (code on stdin); one-letter flags such as -u are ignored. */
  int run_python(const std::vector<std::string>& args, berth_stream out) {
    for (size_t i = 0; i < args.size(); ++i) {
      if (args[i] == "-c" && i + 1 < args.size()) {
        if (args[i + 1].starts_with("# berth python kernel bootstrap")) return run_kernel();  // docs/python-contexts.md
        return run_python_code(args[i + 1], "<string>", out);
      }
      if (args[i] == "-") break;
      if (args[i].size() == 2 && args[i][0] == '-' && args[i] != "-c") continue;
      emit(kStderr, "python3: can't open file '" + args[i] + "': [Errno 2] No such file or directory\n");
      return 2;
    }
    return run_python_code(take_stdin(), "<stdin>", out);
  }

  int run_python_code(std::string_view code, std::string_view file, berth_stream out) {
    try {
      int line_number = 0;
      for (size_t start = 0; start < code.size();) {
        const size_t end = std::min(code.find('\n', start), code.size());
        run_python_line(trim(code.substr(start, end - start)), file, ++line_number, out);
        start = end + 1;
      }
    } catch (const Exited& e) {
      return e.code;
    }
    return 0;
  }

  void run_python_line(std::string_view line, std::string_view file, int line_number, berth_stream out) {
    if (line.empty() || line[0] == '#' || line == "pass" || line.starts_with("import ") || line.starts_with("from ")) {
      return;
    }
    check();
    try {
      if (run_python_statement(line, out)) return;
    } catch (const PythonError& e) {
      const std::string traceback = "Traceback (most recent call last):\n  File \"" + std::string(file) + "\", line " +
                                    std::to_string(line_number) + ", in <module>\n" + e.type +
                                    (e.message.empty() ? "" : ": " + e.message) + "\n";
      error_ = {e.type, e.message, traceback};
      emit(kStderr, traceback);
      throw Exited{1};
    } catch (const Unsupported&) {
    }
    error_ = {"SyntaxError", "fake python cannot run: " + std::string(line),
              "SyntaxError: fake python cannot run: " + std::string(line) + "\n"};
    emit(kStderr, error_.traceback);
    throw Exited{1};
  }

  /** Runs `line` if it is a supported statement, else returns false. Throws Unsupported, PythonError, Exited. */
  bool run_python_statement(std::string_view line, berth_stream out) {
    if (std::optional<std::string_view> args = call_arguments(line, "print")) {
      berth_stream stream = out;
      std::string text;
      for (std::string_view arg : split_arguments(*args)) {
        if (arg.starts_with("file=")) {
          if (trim(arg.substr(5)) != "sys.stderr" && trim(arg.substr(5)) != "sys.stdout") throw Unsupported{};
          stream = trim(arg.substr(5)) == "sys.stderr" ? kStderr : out;
        } else {
          text += (text.empty() ? "" : " ") + python_value(arg, vars_);
        }
      }
      emit(stream, text + "\n");
      return true;
    }
    if (std::optional<std::string_view> args = call_arguments(line, "time.sleep")) {
      const std::optional<double> seconds = parse_seconds(*args);
      if (!seconds) throw Unsupported{};
      sleep(*seconds * 1000);
      return true;
    }
    for (const char* exit_function : {"sys.exit", "exit", "quit"}) {
      const std::optional<std::string_view> args = call_arguments(line, exit_function);
      if (!args) continue;
      const std::string_view code = trim(*args);
      if (code.empty()) throw Exited{0};
      if (std::optional<std::string> message = string_literal(code)) {
        emit(kStderr, *message + "\n");
        throw Exited{1};
      }
      throw Exited{static_cast<int>(IntExpression(code).evaluate() & 0xff)};
    }
    if (line.starts_with("raise ")) {  // raise Name, raise Name(), raise Name(value)
      const std::string_view raised = trim(line.substr(6));
      size_t name_end = 0;
      while (name_end < raised.size() && (is_name_char(raised[name_end], name_end == 0) || raised[name_end] == '.')) {
        ++name_end;
      }
      const std::string type(raised.substr(0, name_end));
      const std::string_view rest = raised.substr(name_end);
      if (type.empty() || (!rest.empty() && (rest.front() != '(' || rest.back() != ')'))) throw Unsupported{};
      const std::string_view value = rest.empty() ? rest : trim(rest.substr(1, rest.size() - 2));
      throw PythonError{type, value.empty() ? "" : python_value(value, vars_)};
    }
    if (line.starts_with("def handler(")) {  // `def handler(event): return EXPR`, one line (EXPR may use `event`)
      constexpr std::string_view kForm = "def handler(event): return ";
      if (!line.starts_with(kForm)) throw Unsupported{};
      handler_ = std::string(trim(line.substr(kForm.size())));
      return true;
    }
    // NAME = EXPR
    size_t name_end = 0;
    while (name_end < line.size() && is_name_char(line[name_end], name_end == 0))
      ++name_end;
    const std::string_view after = trim(line.substr(name_end));
    if (name_end > 0 && after.size() > 1 && after[0] == '=' && after[1] != '=') {
      vars_[std::string(line.substr(0, name_end))] = evaluate(trim(after.substr(1)), vars_);
      return true;
    }
    return false;
  }

  /** Whether a line is one of the statements the mini Python runs (else it may be an expression). */
  static bool is_statement(std::string_view line) {
    for (std::string_view start :
         {"print(", "time.sleep(", "sys.exit(", "exit(", "quit(", "raise ", "def ", "import ", "from ", "pass"}) {
      if (line.starts_with(start)) return true;
    }
    size_t name_end = 0;
    while (name_end < line.size() && is_name_char(line[name_end], name_end == 0))
      ++name_end;
    const std::string_view after = trim(line.substr(name_end));
    return name_end > 0 && after.size() > 1 && after[0] == '=' && after[1] != '=';
  }

  // --- the kernel (host/core/python_kernel.py's protocol; README.md, "Python contexts") ---

  /** Writes one protocol frame to stdout. */
  void frame(std::string_view type, std::string_view payload) {
    std::string f = std::string(type) + " " + std::to_string(payload.size()) + "\n";
    f.append(payload);
    if (const Interruption why = host_.write(BERTH_STREAM_STDOUT, f); why != Interruption::kNone) {
      throw Interrupted{why};
    }
  }

 public:
  /** Serves exec frames until stdin ends (exit 0); variables live as long as the process. */
  int run_kernel() {
    // The bootstrap's stdin: "<length>\n" and the kernel's source, which the mini Python does not run.
    const std::optional<std::string> source_length = read_line();
    const std::optional<size_t> skip = source_length ? parse_number<size_t>(*source_length) : std::nullopt;
    if (!skip) return 3;
    while (pending_.size() < *skip && read_more()) {
    }
    if (pending_.size() < *skip) return 3;
    pending_.erase(0, *skip);
    kernel_ = true;
    frame("ready", R"({"protocol": 1, "python": "fake", "pid": 1})");
    for (int count = 1;; ++count) {
      const std::optional<std::string> header = read_line();
      if (!header) return 0;
      const size_t space = header->find(' ');
      const std::optional<size_t> length =
          space == std::string::npos ? std::nullopt : parse_number<size_t>(header->substr(space + 1));
      if (!length) return 2;
      while (pending_.size() < *length && read_more()) {
      }
      if (pending_.size() < *length) return 0;
      const std::string payload = pending_.substr(0, *length);
      pending_.erase(0, *length);
      if (header->substr(0, space) != "exec") continue;
      frame("result", run_cell(payload, count));
    }
  }

 private:
  /** One cell: its code line by line, a final expression's repr as data.text, then handler(event) if asked. */
  std::string run_cell(const std::string& request_json, int count) {
    Poco::JSON::Object result;
    result.set("execution_count", count);
    std::string code;
    Poco::Dynamic::Var event;
    bool has_event = false;
    try {
      Poco::JSON::Parser parser;
      auto request = parser.parse(request_json).extract<Poco::JSON::Object::Ptr>();
      code = request->optValue<std::string>("code", "");
      if (request->has("cell")) result.set("cell", request->get("cell"));  // echoed: the host matches the result
      has_event = request->has("event");
      if (has_event) event = request->get("event");
    } catch (const std::exception&) {
      code = "raise ValueError('malformed exec frame')";
    }
    const std::string file = "<cell " + std::to_string(count) + ">";
    int exit_code = 0;
    error_ = {};
    std::optional<PyValue> shown;
    std::optional<Poco::Dynamic::Var> returned;
    try {
      std::vector<std::string_view> lines;
      for (size_t start = 0; start <= code.size();) {
        const size_t end = std::min(code.find('\n', start), code.size());
        lines.push_back(trim(std::string_view(code).substr(start, end - start)));
        start = end + 1;
      }
      size_t last = lines.size();
      for (size_t i = lines.size(); i-- > 0;) {
        if (!lines[i].empty() && lines[i][0] != '#') {
          last = i;
          break;
        }
      }
      for (size_t i = 0; i < lines.size(); ++i) {
        if (i == last && !is_statement(lines[i])) {  // the final expression
          check();
          try {
            shown = evaluate(lines[i], vars_);
            continue;
          } catch (const Unsupported&) {
            // not an expression the fake knows: run_python_line reports it
          } catch (const PythonError& e) {
            error_ = {e.type, e.message,
                      "Traceback (most recent call last):\n  File \"" + file + "\", line " + std::to_string(i + 1) +
                          ", in <module>\n" + e.type + (e.message.empty() ? "" : ": " + e.message) + "\n"};
            emit(kStderr, error_.traceback);
            throw Exited{1};
          }
        }
        run_python_line(lines[i], file, static_cast<int>(i + 1), kStdout);
      }
      if (has_event) {
        if (!handler_) {
          error_ = {"NameError", "an event was given but the code defines no handler(event) function"};
          emit(kStderr, error_.type + ": " + error_.message + "\n");
          throw Exited{1};
        }
        if (*handler_ == "event") {
          returned = event;
        } else {
          const PyValue v = evaluate(*handler_, vars_);
          returned = v.is_str ? Poco::Dynamic::Var(v.s) : Poco::Dynamic::Var(v.i);
        }
      }
    } catch (const Exited& e) {
      exit_code = e.code;
    } catch (const PythonError& e) {  // in the handler's expression
      error_ = {e.type, e.message};
      emit(kStderr, e.type + ": " + e.message + "\n");
      exit_code = 1;
    } catch (const Unsupported&) {
      error_ = {"SyntaxError", "fake python cannot run: def handler(event): return " + handler_.value_or("")};
      emit(kStderr, error_.type + ": " + error_.message + "\n");
      exit_code = 1;
    }
    result.set("success", exit_code == 0);
    result.set("exit_code", exit_code);
    if (shown && exit_code == 0) {
      Poco::JSON::Object data;
      data.set("text", shown->repr());
      result.set("data", data);
    }
    if (returned && exit_code == 0) result.set("result", *returned);
    if (exit_code != 0) {
      Poco::JSON::Object error;
      error.set("ename", error_.type.empty() ? "SystemExit" : error_.type);
      error.set("evalue", error_.type.empty() ? std::to_string(exit_code) : error_.message);
      error.set("traceback", error_.traceback);
      result.set("error", error);
    }
    result.set("cwd", process_.pwd);
    std::ostringstream out;
    result.stringify(out);
    return out.str();
  }

  struct CellError {
    std::string type;
    std::string message;
    std::string traceback;
  };
  const Process& process_;
  ProcessHost& host_;
  Variables vars_;                      // assignments (a kernel keeps them across cells)
  std::optional<std::string> handler_;  // `def handler(event): return EXPR`: EXPR
  bool kernel_ = false;                 // serving the kernel protocol: output goes out in frames
  CellError error_;                     // the last uncaught error (for the kernel's result)
  std::string pending_;                 // stdin read from the host that nothing has consumed yet
  bool stdin_eof_ = false;              // the host said stdin ended
  bool exited_ = false;                 // `exit` ran (an interactive shell then ends)
};

}  // namespace

ProcessOutcome run_process(const Process& process, ProcessHost& host) {
  Interpreter interpreter(process, host);
  try {
    interpreter.check();
    return {Interruption::kNone, interpreter.run(process.argv, BERTH_STREAM_STDOUT)};
  } catch (const Interrupted& e) {
    return {e.why, e.why == Interruption::kKilled ? 137 : -1};
  } catch (const Exited& e) {  // `exit N` given directly as argv
    return {Interruption::kNone, e.code};
  }
}

}  // namespace berth::fake
