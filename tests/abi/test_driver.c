/*
 * A minimal driver written in plain C, compiled several times with one BROKEN_* / OLD_MINOR definition each, to
 * exercise every rule the loader enforces (see tests/abi/loader_test.cpp). Without definitions it is a valid
 * driver of the current ABI whose calls all succeed trivially (a one-way `berth_driver_entry` only); the
 * NEGOTIATE_* / NEWER_MINOR_NEGOTIATED / UNKNOWN_ENUMS / INSTANCE_CAPS variants also export the two-way
 * `berth_driver_negotiate` of ABI 1.3. Drivers built from the old 1.1 and 1.2 headers are old_driver.c.
 */
#include <berth/driver.h>

#include <stdlib.h>
#include <string.h>

/* Some variants leave the table or a slot unreferenced on purpose. */
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wunused-variable"

struct berth_instance {
  const berth_host_api* host;
  int narrow; /* INSTANCE_CAPS: configured with {"narrow":true} */
};

static berth_status configure(const berth_host_api* host, const char* config_json, berth_instance** out,
                              berth_error* err) {
#if defined(BROKEN_CONFIGURE_STATUS)
  (void)host, (void)config_json, (void)out, (void)err;
  return 99; /* not a berth_status */
#elif defined(BROKEN_CONFIGURE_NULL)
  (void)host, (void)config_json, (void)out, (void)err;
  return BERTH_OK; /* but no instance */
#else
  if (strcmp(config_json, "{\"fail\":true}") == 0) {
    host->set_error(err, "config says fail");
    return BERTH_INVALID_ARGUMENT;
  }
  struct berth_instance* inst = (struct berth_instance*)malloc(sizeof *inst);
  inst->host = host;
  inst->narrow = strcmp(config_json, "{\"narrow\":true}") == 0;
  *out = inst;
  return BERTH_OK;
#endif
}

static void destroy(berth_instance* inst) {
  free(inst);
}

#if defined(HOSTILE)
/* HOSTILE: legal calls with outsized contents, for "host callbacks are bounded" in loader_test.cpp. */
static char* big_string(size_t n, char c) {
  char* s = (char*)malloc(n + 1);
  memset(s, c, n);
  s[n] = '\0';
  return s;
}
#endif

static berth_status volume_create(berth_instance* i, const char* n, const berth_kv* l, size_t c, berth_error* e) {
  (void)i, (void)n, (void)l, (void)c, (void)e;
#if defined(HOSTILE)
  /* One log line with 1,000 fields, the first value 1 MiB long, and a 1 MiB event name. */
  char* value = big_string(1 << 20, 'v');
  char* event = big_string(1 << 20, 'e');
  berth_kv* fields = (berth_kv*)malloc(1000 * sizeof *fields);
  for (size_t k = 0; k < 1000; ++k) {
    fields[k].key = "k";
    fields[k].value = k == 0 ? value : "x";
  }
  i->host->log(i->host->host_ctx, BERTH_LOG_WARN, event, fields, 1000);
  i->host->log(i->host->host_ctx, BERTH_LOG_WARN, "abi_test.hostile", fields, 1000);
  free(fields);
  free(event);
  free(value);
#endif
  return BERTH_OK;
}
static berth_status volume_remove(berth_instance* i, const char* n, berth_error* e) {
  (void)i, (void)n;
#if defined(HOSTILE)
  char* message = big_string(1 << 20, 'm'); /* a 1 MiB error message */
  i->host->set_error(e, message);
  free(message);
#else
  i->host->set_error(e, "no such volume");
#endif
  return BERTH_NOT_FOUND;
}
static berth_status volume_exists(berth_instance* i, const char* n, int32_t* exists, berth_error* e) {
  (void)i, (void)n, (void)e;
  *exists = 0;
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
  (void)i, (void)h, (void)e;
#if defined(UNKNOWN_ENUMS)
  info->state = 42; /* a state from a newer ABI */
  strcpy(info->handle, "h-new-state");
  return BERTH_OK;
#endif
  info->state = BERTH_SESSION_MISSING;
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
#if defined(HOSTILE)
  /* A label count without labels. */
  berth_session_listing item = {sizeof item, BERTH_SESSION_RUNNING, "h1", NULL, 5};
  fn(ctx, &item);
#endif
  return BERTH_OK;
}
static berth_status exec_(berth_instance* i, const char* h, const berth_exec_request* rq, berth_output_fn out,
                          void* octx, const berth_cancel_token* c, berth_exec_result* r, berth_error* e) {
  (void)i, (void)h, (void)c, (void)e;
#if defined(UNKNOWN_ENUMS)
  out(octx, 7, (const uint8_t*)"odd", 3); /* a stream from a newer ABI */
#endif
  out(octx, BERTH_STREAM_STDOUT, (const uint8_t*)rq->argv[0], strlen(rq->argv[0]));
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
#if defined(HOSTILE)
  /* An entry written by an older/smaller writer: struct_size covers type and name only; the bytes after it (size,
   * mode) are not the driver's to give, so the host must read them as 0. */
  berth_dir_entry entry;
  memset(&entry, 0xAB, sizeof entry);
  entry.struct_size = (uint32_t)(offsetof(berth_dir_entry, name) + sizeof(const char*));
  entry.type = BERTH_ENTRY_FILE;
  entry.name = "short.txt";
  fn(ctx, &entry);
  return BERTH_OK;
#elif defined(UNKNOWN_ENUMS)
  berth_dir_entry entry = {sizeof entry, 9 /* a type from a newer ABI */, "new-kind", 7, 0644, 0};
  fn(ctx, &entry);
  return BERTH_OK;
#else
  return BERTH_UNSUPPORTED;
#endif
}
static berth_status path_remove(berth_instance* i, const char* h, const char* p, berth_error* e) {
  (void)i, (void)h, (void)p, (void)e;
  return BERTH_UNSUPPORTED;
}
static berth_status session_stats(berth_instance* i, const char* h, berth_session_stats* st, berth_error* e) {
  (void)i, (void)h, (void)e;
  st->pids = 1;
#if !defined(STATS_1_1)
  /* ABI 1.2: the disk fields, written only when the caller's struct has room for them (rule 3). */
  if (st->struct_size >= offsetof(berth_session_stats, rootfs_bytes) + sizeof st->rootfs_bytes) {
    st->workspace_bytes = 1u << 20;
    st->rootfs_bytes = 4096;
  }
#endif
  return BERTH_OK;
}

/* ABI 1.3: capabilities of the instance, and a scripted interactive process. */
static uint64_t instance_capabilities(berth_instance* i) {
  /* Narrowed when configured so; otherwise every bit, which the host must not take as more than the table's. */
  return i->narrow ? BERTH_CAP_EXEC : ~(uint64_t)0;
}
struct berth_process {
  int step;
  int killed;
  char stdin_seen[64];
};
static berth_status process_start(berth_instance* i, const char* h, const berth_process_spec* s, berth_process** out,
                                  berth_error* e) {
  (void)i, (void)h, (void)s, (void)e;
  *out = (berth_process*)calloc(1, sizeof **out);
  return *out != NULL ? BERTH_OK : BERTH_INTERNAL;
}
static berth_status process_write_stdin(berth_instance* i, berth_process* p, const uint8_t* d, size_t n,
                                        berth_error* e) {
  (void)i, (void)e;
  size_t have = strlen(p->stdin_seen);
  if (have + n >= sizeof p->stdin_seen) return BERTH_UNAVAILABLE;
  memcpy(p->stdin_seen + have, d, n);
  return BERTH_OK;
}
static berth_status process_close_stdin(berth_instance* i, berth_process* p, berth_error* e) {
  (void)i, (void)p, (void)e;
  return BERTH_OK;
}
static berth_status process_signal(berth_instance* i, berth_process* p, int32_t signo, int32_t group, berth_error* e) {
  (void)i, (void)p, (void)group;
  if (signo < 1 || signo > 64) {
    i->host->set_error(e, "bad signal");
    return BERTH_INVALID_ARGUMENT;
  }
  return BERTH_OK;
}
static berth_status process_resize(berth_instance* i, berth_process* p, uint16_t r, uint16_t c, berth_error* e) {
  (void)i, (void)p, (void)r, (void)c, (void)e;
  return BERTH_OK;
}
static berth_status process_kill(berth_instance* i, berth_process* p, berth_error* e) {
  (void)i, (void)e;
  p->killed = 1;
  return BERTH_OK;
}
/* Events: an unknown type, output on an unknown stream, the stdin it saw on stdout, then EXIT (repeated). */
static berth_status process_next_event(berth_instance* i, berth_process* p, uint32_t wait_ms, berth_process_event* ev,
                                       berth_error* e) {
  (void)i, (void)wait_ms, (void)e;
  switch (p->killed ? 3 : p->step++) {
    case 0:
      ev->type = 99; /* an event type from a newer ABI */
      break;
    case 1:
      ev->type = BERTH_PROCESS_EVENT_OUTPUT;
      ev->stream = 7; /* a stream from a newer ABI */
      ev->data = (const uint8_t*)"odd";
      ev->size = 3;
      break;
    case 2:
      ev->type = BERTH_PROCESS_EVENT_OUTPUT;
      ev->stream = BERTH_STREAM_STDOUT;
      ev->data = (const uint8_t*)p->stdin_seen;
      ev->size = strlen(p->stdin_seen);
      break;
    default:
      ev->type = BERTH_PROCESS_EVENT_EXIT;
      ev->exit_code = p->killed ? 137 : 3;
      ev->signal = p->killed ? 9 : 0;
      ev->killed = p->killed;
  }
  return BERTH_OK;
}
static void process_release(berth_instance* i, berth_process* p) {
  (void)i;
  free(p);
}

static berth_driver_api table = {
    BERTH_DRIVER_API_INIT,
    "abi-test",
    "1.2.3",
    BERTH_CAP_EXEC | BERTH_CAP_STATS | BERTH_CAP_PROCESS,
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
#if defined(BROKEN_NULL_CALLBACK)
    NULL,
#else
    exec_,
#endif
    file_put,
    file_get,
    dir_list,
    path_remove,
    session_stats,
    NULL, /* image_exists (1.2): optional */
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

#if defined(BROKEN_NO_ENTRY)
/* The entry point is missing: export something else instead. */
BERTH_DRIVER_VISIBLE const berth_driver_api* berth_driver_entry_misspelled(void) {
  return &table;
}
#elif defined(BROKEN_ENTRY_NULL)
BERTH_DRIVER_VISIBLE const berth_driver_api* berth_driver_entry(uint32_t major, uint32_t minor) {
  (void)major, (void)minor;
  return NULL;
}
#else
static const berth_driver_api* patched(void) {
#if defined(BROKEN_MAJOR)
  table.abi_major = BERTH_ABI_VERSION_MAJOR + 1;
#elif defined(BROKEN_MINOR_NEWER)
  table.abi_minor = BERTH_ABI_VERSION_MINOR + 1;
#elif defined(BROKEN_UNDERSIZED)
  table.struct_size = BERTH_DRIVER_API_SIZE_1_0 - (uint32_t)sizeof(void*);
#elif defined(BROKEN_OVERSIZED)
  table.struct_size = (uint32_t)sizeof(berth_driver_api) + 64;
#elif defined(BROKEN_BAD_NAME)
  table.name = "bad name with spaces";
#elif defined(NEWER_MINOR_NEGOTIATED)
  /* A driver built against a newer header than the host's: a newer minor and a longer table. */
  table.abi_minor = BERTH_ABI_VERSION_MINOR + 1;
  table.struct_size = (uint32_t)sizeof(berth_driver_api) + 64;
#elif defined(BROKEN_HALF_PROCESS)
  table.process_release = NULL; /* process handles the host could never release */
#elif defined(OLD_MINOR_1)
  /* What a driver built against the 1.1 header looks like: session_stats, but no image_exists slot. */
  table.abi_minor = 1;
  table.struct_size = BERTH_DRIVER_API_SIZE_1_1;
#elif defined(STATS_1_1)
  /* A driver built against the 1.1 header: same table, a 32-byte berth_session_stats without the disk fields. */
  table.abi_minor = 1;
  table.struct_size = BERTH_DRIVER_API_SIZE_1_1;
#elif defined(OLD_MINOR)
  /* What a driver built against the 1.0 header looks like: a shorter table, no session_stats slot. */
  table.abi_minor = 0;
  table.struct_size = BERTH_DRIVER_API_SIZE_1_0;
  table.session_stats = NULL; /* beyond struct_size: the host must not read it anyway */
#endif
  return &table;
}
BERTH_DRIVER_VISIBLE const berth_driver_api* berth_driver_entry(uint32_t major, uint32_t minor) {
  (void)major, (void)minor;
  return patched();
}
#if defined(NEGOTIATE_DOWN)
/* Speaks 1.1 with this host although its table is 1.3: the host must use nothing newer. */
BERTH_DRIVER_VISIBLE berth_status berth_driver_negotiate(berth_negotiation* n) {
  n->api = patched();
  n->abi_minor = 1;
  return BERTH_OK;
}
#elif defined(NEGOTIATE_REFUSE)
/* Needs a newer host than this one. */
BERTH_DRIVER_VISIBLE berth_status berth_driver_negotiate(berth_negotiation* n) {
  n->api = patched();
  n->abi_minor = n->host_abi_minor + 1;
  return BERTH_UNSUPPORTED;
}
#elif defined(NEWER_MINOR_NEGOTIATED) || defined(UNKNOWN_ENUMS) || defined(INSTANCE_CAPS)
BERTH_DRIVER_VISIBLE berth_status berth_driver_negotiate(berth_negotiation* n) {
  return berth_negotiate_default(n, patched());
}
#endif
#endif
