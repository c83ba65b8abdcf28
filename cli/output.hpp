// Human output of the CLI: aligned tables and "key: value" blocks. (--json output is the server's body as is.)
#pragma once

#include <Poco/Dynamic/Var.h>
#include <Poco/JSON/Object.h>

#include <ostream>
#include <string>
#include <vector>

namespace berth::cli {

/** Columns separated by two spaces, padded to the widest cell (by UTF-8 code points), header first. */
void print_table(std::ostream& out, const std::vector<std::string>& header,
                 const std::vector<std::vector<std::string>>& rows);

/** One "key: value" line per pair, keys padded to the longest. */
void print_fields(std::ostream& out, const std::vector<std::pair<std::string, std::string>>& fields);

/**
 * A JSON value as a table cell: strings as they are, null as "-", arrays joined by ",", objects as `k=v,...`,
 * anything else in its JSON form. Control characters become spaces, so a cell stays on one line.
 */
std::string cell(const Poco::Dynamic::Var& value);

/** cell() of `object[key]`, "-" when the key is missing. */
std::string cell(const Poco::JSON::Object::Ptr& object, const std::string& key);

/** The first line of `text`, cut to `max` code points with "…" appended when longer. */
std::string first_line(const std::string& text, std::size_t max);

}  // namespace berth::cli
