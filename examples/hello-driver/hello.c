/*
 * hello: the smallest driver that loads. Every runtime call answers BERTH_UNSUPPORTED; fill them in (see
 * plugins/fake for a complete reference) and run `berth-driver-conformance ./berth_driver_hello.so` as you go.
 */
#include <berth/driver.h>

#include <stdlib.h>

struct berth_instance {
  const berth_host_api* host;
};

static berth_status configure(const berth_host_api* host, const char* config_json, berth_instance** out,
                              berth_error* err) {
  (void)config_json;
  berth_instance* inst = malloc(sizeof *inst);
  if (inst == NULL) {
    host->set_error(err, "out of memory");
    return BERTH_INTERNAL;
  }
  inst->host = host;
  berth_kv fields[] = {{"greeting", "hello"}};
  host->log(host->host_ctx, BERTH_LOG_INFO, "hello.configured", fields, 1);
  *out = inst;
  return BERTH_OK;
}

static void destroy(berth_instance* inst) {
  free(inst);
}

#define UNSUPPORTED(inst, err)                                                \
  do {                                                                        \
    (inst)->host->set_error((err), "the hello driver does not run anything"); \
    return BERTH_UNSUPPORTED;                                                 \
  } while (0)

static berth_status volume_create(berth_instance* i, const char* n, const berth_kv* l, size_t c, berth_error* e) {
  (void)n, (void)l, (void)c;
  UNSUPPORTED(i, e);
}
static berth_status volume_remove(berth_instance* i, const char* n, berth_error* e) {
  (void)n;
  UNSUPPORTED(i, e);
}
static berth_status volume_exists(berth_instance* i, const char* n, int32_t* x, berth_error* e) {
  (void)n, (void)x;
  UNSUPPORTED(i, e);
}
static berth_status session_create(berth_instance* i, const berth_session_spec* s, berth_session_info* o,
                                   berth_error* e) {
  (void)s, (void)o;
  UNSUPPORTED(i, e);
}
static berth_status session_inspect(berth_instance* i, const char* h, berth_session_info* o, berth_error* e) {
  (void)i, (void)h, (void)e;
  o->state = BERTH_SESSION_MISSING; /* nothing ever exists */
  return BERTH_OK;
}
static berth_status session_stop(berth_instance* i, const char* h, uint32_t t, berth_error* e) {
  (void)h, (void)t;
  i->host->set_error(e, "no such session");
  return BERTH_NOT_FOUND;
}
static berth_status session_remove(berth_instance* i, const char* h, berth_error* e) {
  (void)h;
  i->host->set_error(e, "no such session");
  return BERTH_NOT_FOUND;
}
static berth_status session_list(berth_instance* i, const berth_kv* f, size_t n, berth_session_list_fn fn, void* c,
                                 berth_error* e) {
  (void)i, (void)f, (void)n, (void)fn, (void)c, (void)e;
  return BERTH_OK; /* an empty list */
}
static berth_status exec_(berth_instance* i, const char* h, const berth_exec_request* r, berth_output_fn o, void* c,
                          const berth_cancel_token* t, berth_exec_result* res, berth_error* e) {
  (void)h, (void)r, (void)o, (void)c, (void)t, (void)res;
  UNSUPPORTED(i, e);
}
static berth_status file_put(berth_instance* i, const char* h, const char* p, uint32_t m, uint64_t s, berth_read_fn src,
                             void* c, berth_error* e) {
  (void)h, (void)p, (void)m, (void)s, (void)src, (void)c;
  UNSUPPORTED(i, e);
}
static berth_status file_get(berth_instance* i, const char* h, const char* p, berth_write_fn sink, void* c,
                             berth_error* e) {
  (void)h, (void)p, (void)sink, (void)c;
  UNSUPPORTED(i, e);
}
static berth_status dir_list(berth_instance* i, const char* h, const char* p, berth_dir_list_fn fn, void* c,
                             berth_error* e) {
  (void)h, (void)p, (void)fn, (void)c;
  UNSUPPORTED(i, e);
}
static berth_status path_remove(berth_instance* i, const char* h, const char* p, berth_error* e) {
  (void)h, (void)p;
  UNSUPPORTED(i, e);
}

static const berth_driver_api hello_driver = {BERTH_DRIVER_API_INIT,
                                              "hello",
                                              "0.1.0",
                                              0,
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
                                              NULL /* session_stats: optional */};

BERTH_DRIVER_EXPORT(hello_driver)
