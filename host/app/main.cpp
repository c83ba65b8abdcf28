// berthd: wires config, driver plugin and HTTP API together. Everything it uses lives in berth_host.
#include <Poco/Util/HelpFormatter.h>
#include <Poco/Util/Option.h>
#include <Poco/Util/OptionSet.h>
#include <Poco/Util/ServerApplication.h>

#include <berth/driver.h>

#include <iostream>

#include "app/daemon.hpp"

namespace {

class BerthdApplication : public Poco::Util::ServerApplication {
 protected:
  void defineOptions(Poco::Util::OptionSet& options) override {
    ServerApplication::defineOptions(options);
    options.addOption(
        Poco::Util::Option("config", "c", "configuration file (TOML)")
            .required(false)
            .argument("file")
            .callback(Poco::Util::OptionCallback<BerthdApplication>(this, &BerthdApplication::set_config)));
    options.addOption(
        Poco::Util::Option("check-config", "", "validate the configuration and exit")
            .callback(Poco::Util::OptionCallback<BerthdApplication>(this, &BerthdApplication::set_check)));
    options.addOption(
        Poco::Util::Option("version", "v", "print the version and exit")
            .callback(Poco::Util::OptionCallback<BerthdApplication>(this, &BerthdApplication::set_version)));
    options.addOption(Poco::Util::Option("help", "h", "show this help and exit")
                          .callback(Poco::Util::OptionCallback<BerthdApplication>(this, &BerthdApplication::set_help)));
  }

  int main(const std::vector<std::string>& /*args*/) override {
    if (help_) {
      Poco::Util::HelpFormatter help(options());
      help.setCommand(commandName());
      help.setHeader("berthd: the Berth sandbox runtime host");
      help.format(std::cout);
      return EXIT_OK;
    }
    if (version_) {
      std::cout << "berthd " << BERTH_VERSION << " (driver ABI " << BERTH_ABI_VERSION_MAJOR << "."
                << BERTH_ABI_VERSION_MINOR << ")\n";
      return EXIT_OK;
    }
    return berth::app::run_daemon(config_path_, check_only_, [this] { waitForTerminationRequest(); });
  }

 private:
  void set_config(const std::string&, const std::string& value) { config_path_ = value; }
  void set_check(const std::string&, const std::string&) { check_only_ = true; }
  void set_version(const std::string&, const std::string&) {
    version_ = true;
    stopOptionsProcessing();
  }
  void set_help(const std::string&, const std::string&) {
    help_ = true;
    stopOptionsProcessing();
  }

  std::string config_path_ = "berth.toml";
  bool check_only_ = false;
  bool version_ = false;
  bool help_ = false;
};

}  // namespace

POCO_SERVER_MAIN(BerthdApplication)
