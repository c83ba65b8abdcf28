// A C++ driver that breaks rule 6 of driver.h: its configure lets an exception escape. The host must survive it
// and report a clear load error.
#include <berth/driver.h>

#include <stdexcept>

namespace {
berth_status configure(const berth_host_api*, const char*, berth_instance**, berth_error*) {
  throw std::runtime_error("boom");
}
void destroy(berth_instance*) {}
berth_status volume_create(berth_instance*, const char*, const berth_kv*, size_t, berth_error*) {
  return BERTH_OK;
}
berth_status name_only(berth_instance*, const char*, berth_error*) {
  return BERTH_OK;
}
berth_status volume_exists(berth_instance*, const char*, int32_t*, berth_error*) {
  return BERTH_OK;
}
berth_status session_create(berth_instance*, const berth_session_spec*, berth_session_info*, berth_error*) {
  return BERTH_OK;
}
berth_status session_inspect(berth_instance*, const char*, berth_session_info*, berth_error*) {
  return BERTH_OK;
}
berth_status session_stop(berth_instance*, const char*, uint32_t, berth_error*) {
  return BERTH_OK;
}
berth_status session_list(berth_instance*, const berth_kv*, size_t, berth_session_list_fn, void*, berth_error*) {
  return BERTH_OK;
}
berth_status exec(berth_instance*, const char*, const berth_exec_request*, berth_output_fn, void*,
                  const berth_cancel_token*, berth_exec_result*, berth_error*) {
  return BERTH_OK;
}
berth_status file_put(berth_instance*, const char*, const char*, uint32_t, uint64_t, berth_read_fn, void*,
                      berth_error*) {
  return BERTH_OK;
}
berth_status file_get(berth_instance*, const char*, const char*, berth_write_fn, void*, berth_error*) {
  return BERTH_OK;
}
berth_status dir_list(berth_instance*, const char*, const char*, berth_dir_list_fn, void*, berth_error*) {
  return BERTH_OK;
}
berth_status path_remove(berth_instance*, const char*, const char*, berth_error*) {
  return BERTH_OK;
}

const berth_driver_api table = {BERTH_DRIVER_API_INIT,
                                "throwing",
                                "0.0.1",
                                BERTH_CAP_EXEC,
                                configure,
                                destroy,
                                volume_create,
                                name_only,
                                volume_exists,
                                session_create,
                                session_inspect,
                                session_stop,
                                name_only,
                                session_list,
                                exec,
                                file_put,
                                file_get,
                                dir_list,
                                path_remove,
                                nullptr};
}  // namespace

BERTH_DRIVER_EXPORT(table)
