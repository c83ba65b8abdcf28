/*
 * A hostile but memory-safe driver for fuzz_abi: every call's behaviour is read from a byte script handed over in
 * configure's config_json ({"script":"<hex>"}). It returns random statuses (also values no ABI defines), calls
 * set_error and log with NULL, huge or odd strings, fills fixed-size buffers without a terminating NUL, hands out
 * listings and directory entries whose struct_size is smaller than the host's struct (allocated at exactly that
 * size, so a host read past struct_size is an ASan report), and calls the host's callbacks many times.
 */
#include <berth/driver.h>

#include <stdlib.h>
#include <string.h>

struct berth_instance {
  const berth_host_api* host;
  unsigned char* script;
  size_t size;
  size_t pos;
};

static unsigned next(berth_instance* in) {
  if (in->pos >= in->size) return 0;
  return in->script[in->pos++];
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

/* A string of the script's choosing: NULL, empty, short, or large (up to 1 MiB). Owned by the caller (free). */
static char* make_string(berth_instance* in) {
  unsigned kind = next(in) % 4;
  if (kind == 0) return NULL;
  size_t len = kind == 1 ? 0 : kind == 2 ? next(in) % 64 : ((size_t)next(in) << 12) + next(in);
  char* s = (char*)malloc(len + 1);
  for (size_t i = 0; i < len; ++i)
    s[i] = (char)(next(in) | 1); /* any byte but NUL */
  s[len] = '\0';
  return s;
}

static void noise(berth_instance* in, berth_error* err) {
  unsigned what = next(in);
  if ((what & 1) != 0) {
    char* msg = make_string(in);
    in->host->set_error(err, msg);
    free(msg);
  }
  if ((what & 2) != 0) {
    size_t count = next(in) % 5;
    berth_kv fields[4];
    char* strings[9] = {0};
    for (size_t i = 0; i < count && i < 4; ++i) {
      strings[2 * i] = make_string(in);
      strings[2 * i + 1] = make_string(in);
      fields[i].key = strings[2 * i];
      fields[i].value = strings[2 * i + 1];
    }
    strings[8] = make_string(in);
    int32_t level = (int32_t)next(in) - 2;
    in->host->log(in->host->host_ctx, level, strings[8], count > 0 ? fields : NULL, count < 4 ? count : 4);
    for (size_t i = 0; i < 9; ++i)
      free(strings[i]);
  }
  if ((what & 4) != 0) (void)in->host->monotonic_ns(in->host->host_ctx);
}

static berth_status status(berth_instance* in, berth_error* err) {
  noise(in, err);
  return (berth_status)(next(in) % 12) - 1; /* -1 .. 10: includes statuses no ABI defines */
}

static void fill_info(berth_instance* in, berth_session_info* info) {
  berth_session_info mine;
  memset(&mine, 0, sizeof mine);
  mine.struct_size = sizeof mine;
  mine.state = (berth_session_state)next(in) - 1;
  mine.exit_code = (int32_t)next(in) - 128;
  memset(mine.handle, (int)(next(in) | 1), sizeof mine.handle); /* no terminating NUL */
  if ((next(in) & 1) != 0) mine.handle[next(in) % sizeof mine.handle] = '\0';
  memset(mine.endpoint, (int)(next(in) | 1), sizeof mine.endpoint);
  size_t n = info->struct_size < sizeof mine ? info->struct_size : sizeof mine;
  uint32_t keep = info->struct_size;
  memcpy(info, &mine, n);
  info->struct_size = keep;
}

static berth_status configure(const berth_host_api* host, const char* config_json, berth_instance** out,
                              berth_error* err) {
  const char* hex = strstr(config_json, "\"script\":\"");
  berth_instance* in = (berth_instance*)calloc(1, sizeof *in);
  in->host = host;
  if (hex != NULL) {
    hex += strlen("\"script\":\"");
    size_t len = strcspn(hex, "\"") / 2;
    in->script = (unsigned char*)malloc(len + 1);
    for (size_t i = 0; i < len; ++i) {
      int hi = hexval(hex[2 * i]);
      int lo = hexval(hex[2 * i + 1]);
      in->script[i] = (unsigned char)((hi < 0 ? 0 : hi) << 4 | (lo < 0 ? 0 : lo));
    }
    in->size = len;
  }
  berth_status s = status(in, err);
  if (s == BERTH_OK && (next(in) % 8) != 0) {
    *out = in;
    return BERTH_OK;
  }
  free(in->script);
  free(in);
  return s; /* also BERTH_OK without an instance, once in a while */
}

static void destroy(berth_instance* in) {
  free(in->script);
  free(in);
}

static berth_status volume_create(berth_instance* in, const char* n, const berth_kv* l, size_t c, berth_error* e) {
  (void)n, (void)l, (void)c;
  return status(in, e);
}
static berth_status volume_remove(berth_instance* in, const char* n, berth_error* e) {
  (void)n;
  return status(in, e);
}
static berth_status volume_exists(berth_instance* in, const char* n, int32_t* exists, berth_error* e) {
  (void)n;
  *exists = (int32_t)next(in) - 1;
  return status(in, e);
}
static berth_status session_create(berth_instance* in, const berth_session_spec* s, berth_session_info* info,
                                   berth_error* e) {
  (void)s;
  fill_info(in, info);
  return status(in, e);
}
static berth_status session_inspect(berth_instance* in, const char* h, berth_session_info* info, berth_error* e) {
  (void)h;
  fill_info(in, info);
  return status(in, e);
}
static berth_status session_stop(berth_instance* in, const char* h, uint32_t t, berth_error* e) {
  (void)h, (void)t;
  return status(in, e);
}
static berth_status session_remove(berth_instance* in, const char* h, berth_error* e) {
  (void)h;
  return status(in, e);
}
static berth_status session_list(berth_instance* in, const berth_kv* f, size_t fc, berth_session_list_fn on_item,
                                 void* ctx, berth_error* e) {
  (void)f, (void)fc;
  unsigned items = next(in) % 6;
  for (unsigned i = 0; i < items; ++i) {
    /* Exactly struct_size bytes: a host that reads past it reads past the allocation. */
    uint32_t size = (uint32_t)(next(in) % (sizeof(berth_session_listing) + 1));
    if (size < sizeof(uint32_t)) size = sizeof(uint32_t);
    berth_session_listing full;
    memset(&full, 0, sizeof full);
    full.struct_size = size;
    full.state = (berth_session_state)next(in) - 1;
    char* handle = make_string(in);
    berth_kv labels[3];
    char* strings[6] = {0};
    size_t count = next(in) % 4;
    for (size_t k = 0; k < count && k < 3; ++k) {
      strings[2 * k] = make_string(in);
      strings[2 * k + 1] = make_string(in);
      labels[k].key = strings[2 * k];
      labels[k].value = strings[2 * k + 1];
    }
    full.handle = handle;
    full.labels = count > 0 && count <= 3 ? labels : NULL;
    full.label_count = count <= 3 ? count : 3;
    berth_session_listing* item = (berth_session_listing*)malloc(size);
    memcpy(item, &full, size);
    int32_t stop = on_item(ctx, item);
    free(item);
    free(handle);
    for (size_t k = 0; k < 6; ++k)
      free(strings[k]);
    if (stop != 0) break;
  }
  return status(in, e);
}
static berth_status exec(berth_instance* in, const char* h, const berth_exec_request* rq, berth_output_fn on_output,
                         void* ctx, const berth_cancel_token* cancel, berth_exec_result* result, berth_error* e) {
  (void)h, (void)rq;
  unsigned chunks = next(in) % 5;
  for (unsigned i = 0; i < chunks; ++i) {
    char* data = make_string(in);
    berth_stream stream = (berth_stream)next(in) - 1;
    if (on_output(ctx, stream, (const uint8_t*)data, data != NULL ? strlen(data) : 0) != 0) {
      free(data);
      break;
    }
    free(data);
  }
  (void)in->host->is_cancelled(cancel);
  result->exit_code = (int32_t)next(in) - 128;
  result->timed_out = (int32_t)next(in) % 3 - 1;
  if (result->struct_size >= offsetof(berth_exec_result, cancelled) + sizeof(int32_t)) {
    result->cancelled = (int32_t)next(in) % 3 - 1;
  }
  return status(in, e);
}
static berth_status file_put(berth_instance* in, const char* h, const char* p, uint32_t mode, uint64_t size,
                             berth_read_fn source, void* ctx, berth_error* e) {
  (void)h, (void)p, (void)mode, (void)size;
  uint8_t buffer[512];
  unsigned reads = next(in) % 4;
  for (unsigned i = 0; i < reads; ++i) {
    if (source(ctx, buffer, next(in) % sizeof buffer) <= 0) break;
  }
  return status(in, e);
}
static berth_status file_get(berth_instance* in, const char* h, const char* p, berth_write_fn sink, void* ctx,
                             berth_error* e) {
  (void)h, (void)p;
  unsigned pieces = next(in) % 4;
  for (unsigned i = 0; i < pieces; ++i) {
    char* data = make_string(in);
    int32_t stop = sink(ctx, (const uint8_t*)data, data != NULL ? strlen(data) : 0);
    free(data);
    if (stop != 0) break;
  }
  return status(in, e);
}
static berth_status dir_list(berth_instance* in, const char* h, const char* p, berth_dir_list_fn on_entry, void* ctx,
                             berth_error* e) {
  (void)h, (void)p;
  unsigned entries = next(in) % 6;
  for (unsigned i = 0; i < entries; ++i) {
    uint32_t size = (uint32_t)(next(in) % (sizeof(berth_dir_entry) + 1));
    if (size < sizeof(uint32_t)) size = sizeof(uint32_t);
    berth_dir_entry full;
    memset(&full, 0, sizeof full);
    full.struct_size = size;
    full.type = (berth_entry_type)next(in) - 1;
    char* name = make_string(in);
    full.name = name;
    full.size = ((uint64_t)next(in) << 56) | next(in);
    full.mode = next(in) * 0x01010101u;
    berth_dir_entry* entry = (berth_dir_entry*)malloc(size);
    memcpy(entry, &full, size);
    int32_t stop = on_entry(ctx, entry);
    free(entry);
    free(name);
    if (stop != 0) break;
  }
  return status(in, e);
}
static berth_status path_remove(berth_instance* in, const char* h, const char* p, berth_error* e) {
  (void)h, (void)p;
  return status(in, e);
}
static berth_status session_stats(berth_instance* in, const char* h, berth_session_stats* stats, berth_error* e) {
  (void)h;
  stats->memory_bytes = (uint64_t)next(in) << 56;
  stats->cpu_time_ns = next(in);
  stats->pids = ~(uint64_t)0;
  return status(in, e);
}

static berth_status image_exists(berth_instance* in, const char* image, int32_t* exists, berth_error* e) {
  (void)image;
  *exists = (int32_t)next(in) - 1; /* -1, 0, 1, ...: any int32 the driver likes */
  return status(in, e);
}

/* ABI 1.3: any bits, which the host may only use to narrow the table's. */
static uint64_t instance_capabilities(berth_instance* in) {
  return ((uint64_t)next(in) << 56) | ((uint64_t)next(in) << 8) | next(in);
}

/* A process whose events are the script's: any type and stream (also ones no ABI defines), sizes within its
 * buffer, an event struct written only up to a struct_size of the script's choosing. */
struct berth_process {
  char buffer[256];
};
static berth_status process_start(berth_instance* in, const char* h, const berth_process_spec* spec,
                                  berth_process** out, berth_error* e) {
  (void)h, (void)spec;
  berth_status s = status(in, e);
  *out = s == BERTH_OK ? (berth_process*)calloc(1, sizeof **out) : NULL;
  return s == BERTH_OK && *out == NULL ? BERTH_INTERNAL : s;
}
static berth_status process_write_stdin(berth_instance* in, berth_process* p, const uint8_t* d, size_t n,
                                        berth_error* e) {
  memcpy(p->buffer, d, n < sizeof p->buffer ? n : sizeof p->buffer);
  return status(in, e);
}
static berth_status process_close_stdin(berth_instance* in, berth_process* p, berth_error* e) {
  (void)p;
  return status(in, e);
}
static berth_status process_signal(berth_instance* in, berth_process* p, int32_t signo, int32_t group, berth_error* e) {
  (void)p, (void)signo, (void)group;
  return status(in, e);
}
static berth_status process_resize(berth_instance* in, berth_process* p, uint16_t r, uint16_t c, berth_error* e) {
  (void)p, (void)r, (void)c;
  return status(in, e);
}
static berth_status process_kill(berth_instance* in, berth_process* p, berth_error* e) {
  (void)p;
  return status(in, e);
}
static berth_status process_next_event(berth_instance* in, berth_process* p, uint32_t wait_ms, berth_process_event* ev,
                                       berth_error* e) {
  (void)wait_ms;
  berth_process_event mine;
  memset(&mine, 0, sizeof mine);
  mine.type = (berth_process_event_type)next(in) - 1;
  mine.stream = (berth_stream)next(in) - 1;
  mine.data = next(in) % 2 == 0 ? NULL : (const uint8_t*)p->buffer;
  mine.size = mine.data != NULL ? next(in) % sizeof p->buffer : 0;
  mine.exit_code = (int32_t)(next(in) << 24) - 7;
  mine.signal = (int32_t)next(in);
  mine.timed_out = (int32_t)next(in);
  mine.killed = (int32_t)next(in);
  mine.output_dropped = ~(uint64_t)0;
  size_t n = next(in) % (sizeof mine + 1);
  if (n > ev->struct_size) n = ev->struct_size;
  if (n > sizeof(uint32_t)) memcpy((char*)ev + sizeof(uint32_t), (const char*)&mine + sizeof(uint32_t), n - 4);
  return status(in, e);
}
static void process_release(berth_instance* in, berth_process* p) {
  (void)in;
  free(p);
}

static const berth_driver_api kTable = {
    BERTH_DRIVER_API_INIT,
    "fuzz",
    "0.0.0",
    BERTH_CAP_EXEC | BERTH_CAP_EXEC_STREAM | BERTH_CAP_EXEC_CANCEL | BERTH_CAP_FILES | BERTH_CAP_VOLUMES |
        BERTH_CAP_STATS | BERTH_CAP_PROCESS | BERTH_CAP_PROCESS_PTY,
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
    exec,
    file_put,
    file_get,
    dir_list,
    path_remove,
    session_stats,
    image_exists,
    instance_capabilities,
    process_start,
    process_write_stdin,
    process_close_stdin,
    process_signal,
    process_resize,
    process_kill,
    process_next_event,
    process_release,
};

BERTH_DRIVER_EXPORT(kTable)
