#include "core/profile_catalog.hpp"

#include <algorithm>
#include <cctype>

#include "core/errors.hpp"
#include "core/log.hpp"

namespace berth::core {

namespace {

Error conflict(const std::string& message, const std::string& name, const std::string& reason) {
  return Error(ErrorCode::conflict, message, {{"profile", name}, {"reason", reason}});
}

}  // namespace

bool is_valid_profile_name(const std::string& name) {
  if (name.empty() || name.size() > 64 || !std::isalnum(static_cast<unsigned char>(name[0]))) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
  });
}

ProfileCatalog::ProfileCatalog(std::map<std::string, Profile> builtins, std::string default_name, store::Store& store,
                               Driver& driver, std::shared_ptr<const Clock> clock, ProfileCodec codec)
    : builtins_([&] {
        std::map<std::string, std::shared_ptr<const Profile>> out;
        for (auto& [name, p] : builtins)
          out.emplace(name, std::make_shared<const Profile>(std::move(p)));
        return out;
      }()),
      default_name_(std::move(default_name)),
      store_(store),
      driver_(driver),
      clock_(std::move(clock)),
      codec_(std::move(codec)) {
  if (!builtins_.count(default_name_)) {
    throw std::invalid_argument("default profile '" + default_name_ + "' is not defined");
  }
}

void ProfileCatalog::load() {
  if (!codec_.parse) return;
  std::map<std::string, ProfileEntry> loaded;
  std::set<std::string> unreadable;
  for (const auto& row : store_.list_profiles()) {
    if (builtins_.count(row.name)) {
      log::warn("profile.shadowed", {{"profile", row.name}, {"reason", "a profile of the config file has this name"}});
      continue;
    }
    try {
      ProfileEntry e;
      e.profile = std::make_shared<const Profile>(codec_.parse(row.name, row.spec));
      e.created_at = row.created_at;
      e.updated_at = row.updated_at;
      loaded.emplace(row.name, std::move(e));
    } catch (const Error& err) {
      log::error("profile.load_failed", {{"profile", row.name}, {"reason", err.what()}});
      unreadable.insert(row.name);
    }
  }
  std::lock_guard lock(mutex_);
  stored_ = std::move(loaded);
  unreadable_ = std::move(unreadable);
  log::info("profile.loaded",
            {{"builtin", std::to_string(builtins_.size())}, {"stored", std::to_string(stored_.size())}});
}

std::shared_ptr<const Profile> ProfileCatalog::find(const std::string& name) const {
  if (auto it = builtins_.find(name); it != builtins_.end()) return it->second;
  std::lock_guard lock(mutex_);
  auto it = stored_.find(name);
  return it != stored_.end() ? it->second.profile : nullptr;
}

std::shared_ptr<const Profile> ProfileCatalog::default_profile() const {
  return builtins_.at(default_name_);
}

std::vector<ProfileEntry> ProfileCatalog::list() const {
  std::map<std::string, ProfileEntry> all;
  for (const auto& [name, p] : builtins_)
    all.emplace(name, ProfileEntry{p, true, std::nullopt, std::nullopt});
  {
    std::lock_guard lock(mutex_);
    for (const auto& [name, e] : stored_)
      all.emplace(name, e);  // a built-in of the same name stays
  }
  std::vector<ProfileEntry> out;
  out.reserve(all.size());
  for (auto& [name, e] : all)
    out.push_back(std::move(e));
  return out;
}

ProfileEntry ProfileCatalog::get(const std::string& name) const {
  if (auto it = builtins_.find(name); it != builtins_.end()) return ProfileEntry{it->second, true, {}, {}};
  std::lock_guard lock(mutex_);
  auto it = stored_.find(name);
  if (it == stored_.end()) throw Error(ErrorCode::not_found, "no profile '" + name + "'", {{"profile", name}});
  return it->second;
}

Profile ProfileCatalog::parse_checked(const std::string& name, const std::string& json) {
  if (!codec_.parse || !codec_.serialize) {
    throw Error(ErrorCode::capability_not_supported, "profiles cannot be changed over the API in this berthd");
  }
  Profile p = codec_.parse(name, json);
  // An image the engine does not have would fail at the first session start, long after this call: refuse it now.
  std::optional<bool> present;
  try {
    present = driver_.image_exists(p.image);
  } catch (const DriverError& e) {
    if (e.code() == DriverErrc::invalid_argument) {
      throw Error(ErrorCode::validation_error, "image '" + p.image + "': " + e.what(),
                  {{"field", "image"}, {"image", p.image}});
    }
    throw Error(e.retryable() ? ErrorCode::driver_unavailable : ErrorCode::internal,
                std::string("checking image '") + p.image + "': " + e.what())
        .with_retry_after(std::chrono::seconds(5));
  }
  if (!present) {
    log::warn("profile.image_unchecked",
              {{"profile", name}, {"image", p.image}, {"reason", "driver has no image_exists"}});
  } else if (!*present) {
    throw Error(ErrorCode::validation_error,
                "image '" + p.image + "' is not on the engine of driver '" + driver_.identity().name +
                    "' (build or pull it first; berthd never pulls)",
                {{"field", "image"}, {"image", p.image}});
  }
  return p;
}

ProfileEntry ProfileCatalog::create(const std::string& name, const std::string& json) {
  if (!is_valid_profile_name(name)) {
    throw Error(ErrorCode::validation_error,
                "name must be 1-64 characters of [A-Za-z0-9._-], starting with a letter or digit", {{"field", "name"}});
  }
  if (builtins_.count(name)) throw conflict("profile '" + name + "' exists (config file)", name, "exists");
  Profile p = parse_checked(name, json);
  store::ProfileRow row;
  row.name = name;
  row.spec = codec_.serialize(p);
  row.created_at = row.updated_at = clock_->now();
  std::lock_guard lock(mutex_);
  if (stored_.count(name) || unreadable_.count(name)) throw conflict("profile '" + name + "' exists", name, "exists");
  try {
    store_.insert_profile(row);
  } catch (const store::UniqueViolation&) {
    throw conflict("profile '" + name + "' exists", name, "exists");
  }
  ProfileEntry e{std::make_shared<const Profile>(std::move(p)), false, row.created_at, row.updated_at};
  stored_[name] = e;
  log::info("profile.created", {{"profile", name}, {"image", e.profile->image}});
  return e;
}

ProfileEntry ProfileCatalog::replace(const std::string& name, const std::string& json) {
  if (builtins_.count(name)) {
    throw conflict("profile '" + name + "' comes from the config file and is read-only", name, "builtin");
  }
  {
    std::lock_guard lock(mutex_);
    if (!stored_.count(name) && !unreadable_.count(name)) {
      throw Error(ErrorCode::not_found, "no profile '" + name + "'", {{"profile", name}});
    }
  }
  Profile p = parse_checked(name, json);
  std::lock_guard lock(mutex_);
  auto it = stored_.find(name);
  if (it == stored_.end() && !unreadable_.count(name)) {
    throw Error(ErrorCode::not_found, "no profile '" + name + "'", {{"profile", name}});
  }
  store::ProfileRow row;
  row.name = name;
  row.spec = codec_.serialize(p);
  row.created_at = it != stored_.end() && it->second.created_at ? *it->second.created_at : clock_->now();
  row.updated_at = clock_->now();
  if (!store_.update_profile(row)) {
    if (it != stored_.end()) stored_.erase(it);
    unreadable_.erase(name);
    throw Error(ErrorCode::not_found, "no profile '" + name + "'", {{"profile", name}});
  }
  unreadable_.erase(name);
  auto& entry = stored_[name];
  entry.profile = std::make_shared<const Profile>(std::move(p));
  if (!entry.created_at) entry.created_at = row.created_at;
  entry.updated_at = row.updated_at;
  log::info("profile.replaced", {{"profile", name}, {"image", entry.profile->image}});
  return entry;
}

void ProfileCatalog::remove(const std::string& name) {
  if (builtins_.count(name)) {
    throw conflict("profile '" + name + "' comes from the config file and is read-only", name, "builtin");
  }
  std::unique_lock use(use_mutex_);  // no create is between picking this profile and storing its row
  std::lock_guard lock(mutex_);
  if (!stored_.count(name) && !unreadable_.count(name)) {
    throw Error(ErrorCode::not_found, "no profile '" + name + "'", {{"profile", name}});
  }
  const int users = store_.count_live_sandboxes_with_profile(name);
  if (users > 0) {
    Error e(ErrorCode::conflict, "profile '" + name + "' is used by " + std::to_string(users) + " live sandbox(es)",
            {{"profile", name}, {"reason", "in_use"}, {"sandboxes", std::to_string(users)}});
    throw e;
  }
  store_.delete_profile(name);
  stored_.erase(name);
  unreadable_.erase(name);
  log::info("profile.deleted", {{"profile", name}});
}

}  // namespace berth::core
