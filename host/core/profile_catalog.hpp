// The profiles a sandbox may be created with: the built-ins from the config file (read-only) and the ones created
// over the API (admin role), which live in the store. Knows nothing of HTTP or TOML: a profile's JSON form is read
// and written by the codec the application wires in (config/ reads it by the config loader's own rules).
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <shared_mutex>
#include <string>
#include <vector>

#include "core/clock.hpp"
#include "core/driver.hpp"
#include "core/profile.hpp"
#include "core/store.hpp"

namespace berth::core {

/**
 * Reads and writes the JSON object of one profile (the keys of a `[profiles.<name>]` table). `parse` throws
 * core::Error(validation_error) with details.field naming the key; `serialize` gives the canonical form, which
 * `parse` reads back to the same profile. Both must be thread-safe.
 */
struct ProfileCodec {
  std::function<Profile(const std::string& name, const std::string& json)> parse;
  std::function<std::string(const Profile&)> serialize;
};

/** One profile as the catalog holds it. */
struct ProfileEntry {
  std::shared_ptr<const Profile> profile;  // never null; immutable (a replace swaps the pointer)
  bool builtin = false;                    // from the config file: read-only over the API
  std::optional<std::chrono::system_clock::time_point> created_at;  // stored profiles only
  std::optional<std::chrono::system_clock::time_point> updated_at;
};

/**
 * The profile catalog. Built-ins win over a stored profile of the same name (the stored one is logged and left
 * alone). Every method is thread-safe. Stored profiles are cached in memory, loaded by load() and refreshed by this
 * process's own writes (several berthd on one database: issue 11 adds cross-instance refresh).
 *
 * Errors (core::Error): validation_error (bad name, bad keys, an image the engine does not have: details.field),
 * not_found, conflict (details.reason: "exists", "builtin", "in_use" with details.sandboxes), capability_not_supported
 * (no codec wired), driver_unavailable (the engine could not answer the image check).
 */
class ProfileCatalog {
 public:
  /** `builtins` must hold `default_name`. `store` and `driver` must outlive the catalog. */
  ProfileCatalog(std::map<std::string, Profile> builtins, std::string default_name, store::Store& store, Driver& driver,
                 std::shared_ptr<const Clock> clock, ProfileCodec codec);

  /**
   * Reads the stored profiles (once, at start-up). One that no longer reads (a bound in the config changed) is
   * skipped with a `profile.load_failed` log line and stays in the store untouched: find() and get() do not know it,
   * but replace() fixes it and remove() deletes it. Throws store::StoreError.
   */
  void load();

  /** The profile named `name`, or null. */
  std::shared_ptr<const Profile> find(const std::string& name) const;
  /** The default profile (a built-in). */
  std::shared_ptr<const Profile> default_profile() const;
  /** The name of the default profile. */
  const std::string& default_name() const { return default_name_; }
  /** Every profile, built-ins and stored, ordered by name. */
  std::vector<ProfileEntry> list() const;
  /** One profile; not_found if there is none. */
  ProfileEntry get(const std::string& name) const;

  /** Creates a stored profile from its JSON object; conflict if the name is taken. */
  ProfileEntry create(const std::string& name, const std::string& json);
  /** Replaces a stored profile; it applies to each sandbox's next session start. conflict for a built-in. */
  ProfileEntry replace(const std::string& name, const std::string& json);
  /** Deletes a stored profile; conflict for a built-in or while live sandboxes use it. */
  void remove(const std::string& name);

  /**
   * Held (shared) by a sandbox create from the moment it picks its profile until its row is stored, so that
   * remove() (exclusive) never deletes a profile a new sandbox is about to use.
   */
  std::shared_lock<std::shared_mutex> use_lock() const { return std::shared_lock(use_mutex_); }

  /** The JSON object of a profile (the codec's canonical form); empty when no codec is wired. */
  std::string to_json(const Profile& p) const { return codec_.serialize ? codec_.serialize(p) : std::string(); }

 private:
  Profile parse_checked(const std::string& name, const std::string& json);

  const std::map<std::string, std::shared_ptr<const Profile>> builtins_;
  const std::string default_name_;
  store::Store& store_;
  Driver& driver_;
  std::shared_ptr<const Clock> clock_;
  const ProfileCodec codec_;

  mutable std::shared_mutex use_mutex_;  // see use_lock()
  mutable std::mutex mutex_;             // guards stored_ and serialises writes
  std::map<std::string, ProfileEntry> stored_;
  std::set<std::string> unreadable_;  // stored, but they no longer read (profile.load_failed): PUT or DELETE them
};

/** A profile name: 1..64 bytes of [A-Za-z0-9._-], starting with a letter or digit. */
bool is_valid_profile_name(const std::string& name);

}  // namespace berth::core
