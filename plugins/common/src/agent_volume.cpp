#include "agent_volume.hpp"

#include <Poco/DigestEngine.h>
#include <Poco/JSON/Array.h>
#include <Poco/JSON/Parser.h>
#include <Poco/SHA2Engine.h>
#include <archive.h>
#include <archive_entry.h>

#include <unistd.h>

#include <atomic>
#include <memory>
#include <sstream>
#include <thread>

namespace berth::engine::compat {

namespace {

using Poco::JSON::Array;
using Poco::JSON::Object;

constexpr const char* kLabelAgentVolume = "io.berth.driver.agent-volume";  // on the volume and the helper

la_ssize_t append_to_string(struct archive*, void* ctx, const void* buffer, size_t length) {
  static_cast<std::string*>(ctx)->append(static_cast<const char*>(buffer), length);
  return static_cast<la_ssize_t>(length);
}

/** The image id an import answered: the last `"status":"sha256:..."` of its JSON lines. Throws on an error line. */
std::string imported_image_id(const std::string& body) {
  std::string id;
  std::istringstream lines(body);
  for (std::string line; std::getline(lines, line);) {
    if (line.find('{') == std::string::npos) continue;
    Object::Ptr o;
    try {
      o = Poco::JSON::Parser().parse(line).extract<Object::Ptr>();
    } catch (const std::exception&) {
      continue;
    }
    if (o->has("error"))
      throw Error(Errc::internal, "the engine refused the agent image: " + o->getValue<std::string>("error"));
    if (o->has("status")) {
      const auto status = o->getValue<std::string>("status");
      if (status.rfind("sha256:", 0) == 0) id = status;
    }
  }
  if (id.empty()) throw Error(Errc::internal, "the engine's import answer names no image: " + body.substr(0, 200));
  return id;
}

/** Creates, starts and waits for the helper; returns its exit status (127 if it could not start: no runnable agent
 *  in the volume). Removes it whatever happens. */
int run_helper(Client& client, const std::string& name, const std::string& image, const Object::Ptr& host_config_base,
               std::chrono::milliseconds timeout) {
  Object::Ptr host_config = new Object(*host_config_base);
  Array::Ptr mounts = new Array;
  Object::Ptr m = new Object;
  m->set("Type", std::string("volume"));
  m->set("Source", name);
  m->set("Target", std::string("/.berth"));
  mounts->add(m);
  host_config->set("Mounts", mounts);
  host_config->set("NetworkMode", std::string("none"));
  Object::Ptr labels = new Object;
  labels->set(kLabelAgentVolume, name);
  Object::Ptr body = new Object;
  body->set("Image", image);
  Array::Ptr entrypoint = new Array;
  entrypoint->add(std::string("/.berth/agent"));
  Array::Ptr cmd = new Array;
  cmd->add(std::string("--version"));
  body->set("Entrypoint", entrypoint);
  body->set("Cmd", cmd);
  body->set("User", std::string("65534:65534"));  // nobody: the helper needs no privilege to run --version
  body->set("NetworkDisabled", true);
  body->set("Labels", labels);
  body->set("HostConfig", host_config);
  static std::atomic<unsigned> counter{0};
  const std::string helper = name + "-fill-" + std::to_string(::getpid()) + "-" + std::to_string(++counter);
  struct Remove {  // by name: armed before the create, so no answer can leave it behind
    Client& client;
    std::string name;
    ~Remove() {
      try {
        client.call("DELETE", "/containers/" + url_encode(name) + "?force=true", {}, {404, 409});
      } catch (const std::exception&) {
      }
    }
  } remove{client, helper};
  client.call_json("POST", "/containers/create?name=" + url_encode(helper), body);
  try {
    client.call("POST", "/containers/" + url_encode(helper) + "/start", {}, {304});
  } catch (const Error& e) {
    if (e.code() == Errc::unavailable || e.code() == Errc::timeout) throw;
    return 127;  // the engine could not start /.berth/agent: missing, cut short or not executable
  }
  const auto waited = client.call("POST", "/containers/" + url_encode(helper) + "/wait", {}, {}, timeout);
  return waited.json_object()->optValue<int>("StatusCode", -1);
}

}  // namespace

std::string agent_volume_name(const std::string& agent_bytes) {
  Poco::SHA2Engine sha(Poco::SHA2Engine::SHA_256);
  sha.update(agent_bytes.data(), static_cast<unsigned>(agent_bytes.size()));
  return "berth-agent-" + Poco::DigestEngine::digestToHex(sha.digest()).substr(0, 16);
}

std::string agent_volume_tar(const std::string& agent_bytes) {
  std::string out;
  std::unique_ptr<struct archive, int (*)(struct archive*)> a(archive_write_new(), archive_write_free);
  if (!a) throw Error(Errc::internal, "archive_write_new failed");
  auto check = [&](int rc, const char* what) {
    if (rc >= ARCHIVE_WARN) return;
    const char* message = archive_error_string(a.get());
    throw Error(Errc::internal, std::string("agent tar: ") + what + ": " + (message ? message : "failed"));
  };
  check(archive_write_set_format_pax_restricted(a.get()), "set format");
  check(archive_write_open(a.get(), &out, nullptr, append_to_string, nullptr), "open");
  struct Item {
    const char* path;
    bool dir;
  };
  for (const Item item : {Item{".berth", true}, Item{".berth/run", true}, Item{".berth/agent", false}}) {
    std::unique_ptr<struct archive_entry, void (*)(struct archive_entry*)> e(archive_entry_new(), archive_entry_free);
    archive_entry_set_pathname(e.get(), item.path);
    archive_entry_set_filetype(e.get(), item.dir ? AE_IFDIR : AE_IFREG);
    archive_entry_set_perm(e.get(), 0755);
    archive_entry_set_uid(e.get(), 0);
    archive_entry_set_gid(e.get(), 0);
    archive_entry_set_size(e.get(), item.dir ? 0 : static_cast<la_int64_t>(agent_bytes.size()));
    check(archive_write_header(a.get(), e.get()), "header");
    if (!item.dir && archive_write_data(a.get(), agent_bytes.data(), agent_bytes.size()) !=
                         static_cast<la_ssize_t>(agent_bytes.size()))
      check(ARCHIVE_FATAL, "data");
  }
  check(archive_write_close(a.get()), "close");
  return out;
}

void ensure_agent_volume(Client& client, const std::string& name, const std::string& agent_bytes,
                         const Object::Ptr& host_config, std::chrono::milliseconds helper_timeout) {
  const auto imported = client.send("POST", "/images/create?fromSrc=-&repo=berth-agent&tag=" + name.substr(12),
                                    agent_volume_tar(agent_bytes), "application/x-tar");
  if (!imported.ok()) {
    throw Error(Errc::internal, "the engine refused the agent image (" + std::to_string(imported.status) +
                                    "): " + imported.body.substr(0, 200));
  }
  const std::string image = imported_image_id(imported.body);
  struct RemoveImage {
    Client& client;
    std::string image;
    ~RemoveImage() {
      try {  // refused while another instance's helper uses it: that one removes it
        client.call("DELETE", "/images/" + image + "?force=true", {}, {404, 409});
      } catch (const std::exception&) {
      }
    }
  } remove_image{client, image};
  for (int attempt = 0;; ++attempt) {
    if (client.call("GET", "/volumes/" + url_encode(name), {}, {404}).status == 404) {
      Object::Ptr labels = new Object;
      labels->set(kLabelAgentVolume, name);
      Object::Ptr body = new Object;
      body->set("Name", name);
      body->set("Driver", std::string("local"));
      body->set("Labels", labels);
      client.call_json("POST", "/volumes/create", body, {409});  // 409: another instance was quicker
    }
    int status = run_helper(client, name, image, host_config, helper_timeout);
    if (status != 0) {  // perhaps another instance's fill of this volume was half done: look once more
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      status = run_helper(client, name, image, host_config, helper_timeout);
    }
    if (status == 0) return;
    if (attempt > 0) {
      throw Error(Errc::internal, "the agent in volume '" + name + "' does not run (exit " + std::to_string(status) +
                                      " of /.berth/agent --version)");
    }
    // A volume of that name that does not hold a working agent (filled by hand, or an interrupted fill): anew.
    client.call("DELETE", "/volumes/" + url_encode(name));
  }
}

}  // namespace berth::engine::compat
