/*
 * A driver built from an OLD copy of the SDK header (tests/abi/headers/1.1 or 1.2, put first on the include path
 * by tests/CMakeLists.txt): what a third party's driver compiled before ABI 1.3 is. It exports only the one-way
 * `berth_driver_entry` of its header's BERTH_DRIVER_EXPORT, has no process slots and no instance_capabilities.
 * loader_test.cpp checks that the current host still loads and uses it.
 */
#include <berth/driver.h>

#include <stdlib.h>
#include <string.h>

#if BERTH_ABI_VERSION_MINOR >= 3
#error "old_driver.c must be compiled against an old header copy"
#endif

struct berth_instance {
  const berth_host_api* host;
};

static berth_status configure(const berth_host_api* host, const char* config_json, berth_instance** out,
                              berth_error* err) {
  (void)config_json, (void)err;
  *out = (berth_instance*)malloc(sizeof **out);
  (*out)->host = host;
  return BERTH_OK;
}
static void destroy(berth_instance* inst) {
  free(inst);
}
static berth_status volume_create(berth_instance* i, const char* n, const berth_kv* l, size_t c, berth_error* e) {
  (void)i, (void)n, (void)l, (void)c, (void)e;
  return BERTH_OK;
}
static berth_status volume_remove(berth_instance* i, const char* n, berth_error* e) {
  (void)n;
  i->host->set_error(e, "old driver: no such volume");
  return BERTH_NOT_FOUND;
}
static berth_status volume_exists(berth_instance* i, const char* n, int32_t* exists, berth_error* e) {
  (void)i, (void)n, (void)e;
  *exists = 1;
  return BERTH_OK;
}
static berth_status session_create(berth_instance* i, const berth_session_spec* s, berth_session_info* info,
                                   berth_error* e) {
  (void)i, (void)e;
  info->state = BERTH_SESSION_RUNNING;
  strncpy(info->handle, s->session_id, BERTH_HANDLE_MAX - 1);
  return BERTH_OK;
}
static berth_status session_inspect(berth_instance* i, const char* h, berth_session_info* info, berth_error* e) {
  (void)i, (void)e;
  info->state = BERTH_SESSION_RUNNING;
  strncpy(info->handle, h, BERTH_HANDLE_MAX - 1);
  return BERTH_OK;
}
static berth_status session_stop(berth_instance* i, const char* h, uint32_t t, berth_error* e) {
  (void)i, (void)h, (void)t, (void)e;
  return BERTH_OK;
}
static berth_status session_remove(berth_instance* i, const char* h, berth_error* e) {
  (void)i, (void)h, (void)e;
  return BERTH_OK;
}
static berth_status session_list(berth_instance* i, const berth_kv* f, size_t n, berth_session_list_fn fn, void* ctx,
                                 berth_error* e) {
  (void)i, (void)f, (void)n, (void)fn, (void)ctx, (void)e;
  return BERTH_OK;
}
static berth_status exec_(berth_instance* i, const char* h, const berth_exec_request* rq, berth_output_fn out,
                          void* octx, const berth_cancel_token* c, berth_exec_result* r, berth_error* e) {
  (void)i, (void)h, (void)c, (void)e;
  out(octx, BERTH_STREAM_STDOUT, rq->stdin_data, rq->stdin_size); /* cat */
  r->exit_code = 0;
  return BERTH_OK;
}
static berth_status file_put(berth_instance* i, const char* h, const char* p, uint32_t m, uint64_t s, berth_read_fn src,
                             void* sctx, berth_error* e) {
  (void)i, (void)h, (void)p, (void)m, (void)s, (void)src, (void)sctx, (void)e;
  return BERTH_UNSUPPORTED;
}
static berth_status file_get(berth_instance* i, const char* h, const char* p, berth_write_fn sink, void* sctx,
                             berth_error* e) {
  (void)i, (void)h, (void)p, (void)sink, (void)sctx, (void)e;
  return BERTH_UNSUPPORTED;
}
static berth_status dir_list(berth_instance* i, const char* h, const char* p, berth_dir_list_fn fn, void* ctx,
                             berth_error* e) {
  (void)i, (void)h, (void)p, (void)fn, (void)ctx, (void)e;
  return BERTH_UNSUPPORTED;
}
static berth_status path_remove(berth_instance* i, const char* h, const char* p, berth_error* e) {
  (void)i, (void)h, (void)p, (void)e;
  return BERTH_UNSUPPORTED;
}
static berth_status session_stats(berth_instance* i, const char* h, berth_session_stats* st, berth_error* e) {
  (void)i, (void)h, (void)e;
  st->pids = 2;
  return BERTH_OK;
}
#if BERTH_ABI_VERSION_MINOR >= 2
static berth_status image_exists(berth_instance* i, const char* image, int32_t* exists, berth_error* e) {
  (void)i, (void)e;
  *exists = strcmp(image, "old/present:1") == 0;
  return BERTH_OK;
}
#endif

static const berth_driver_api table = {
    BERTH_DRIVER_API_INIT,
    "old-header",
    "0.9.0",
    BERTH_CAP_EXEC | BERTH_CAP_STATS,
    configure,
    destroy,
    volume_create,
    volume_remove,
    volume_exists,
    session_create,
    session_inspect,
    session_stop,
    session_remove,
    session_list,
    exec_,
    file_put,
    file_get,
    dir_list,
    path_remove,
    session_stats,
#if BERTH_ABI_VERSION_MINOR >= 2
    image_exists,
#endif
};

BERTH_DRIVER_EXPORT(table)
