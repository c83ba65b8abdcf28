/*
 * Compiles berth/driver.h as strict C11 and pins the ABI layout on LP64 targets. A change that moves a field or
 * grows a struct anywhere but at its end breaks this file: that is the point.
 */
#include <berth/driver.h>

#include <stdio.h>

#define PIN(type, field, off) _Static_assert(offsetof(type, field) == (off), #type "." #field " moved")
#define SIZE(type, n) _Static_assert(sizeof(type) == (n), "sizeof(" #type ") changed")

#if UINTPTR_MAX == 0xFFFFFFFFFFFFFFFFu
PIN(berth_driver_api, struct_size, 0);
PIN(berth_driver_api, abi_major, 4);
PIN(berth_driver_api, abi_minor, 8);
PIN(berth_driver_api, name, 16);
PIN(berth_driver_api, version, 24);
PIN(berth_driver_api, capabilities, 32);
PIN(berth_driver_api, configure, 40);
PIN(berth_driver_api, destroy, 48);
PIN(berth_driver_api, volume_create, 56);
PIN(berth_driver_api, session_create, 80);
PIN(berth_driver_api, session_list, 112);
PIN(berth_driver_api, exec, 120);
PIN(berth_driver_api, file_put, 128);
PIN(berth_driver_api, path_remove, 152);
PIN(berth_driver_api, session_stats, 160);         /* 1.1 */
PIN(berth_driver_api, image_exists, 168);          /* 1.2 */
PIN(berth_driver_api, instance_capabilities, 176); /* 1.3 */
PIN(berth_driver_api, process_start, 184);
PIN(berth_driver_api, process_write_stdin, 192);
PIN(berth_driver_api, process_next_event, 232);
PIN(berth_driver_api, process_release, 240);
SIZE(berth_driver_api, 248);
_Static_assert(BERTH_DRIVER_API_SIZE_1_2 == 176, "the 1.2 table size is frozen");
_Static_assert(BERTH_DRIVER_API_SIZE_1_1 == 168, "the 1.1 table size is frozen");
_Static_assert(BERTH_DRIVER_API_SIZE_1_0 == 160, "the 1.0 table size is frozen");

PIN(berth_host_api, host_ctx, 16);
PIN(berth_host_api, log, 24);
PIN(berth_host_api, monotonic_ns, 32);
PIN(berth_host_api, set_error, 56);
PIN(berth_host_api, is_cancelled, 64);
SIZE(berth_host_api, 72);

PIN(berth_session_spec, session_id, 8);
PIN(berth_session_spec, nano_cpus, 56);
PIN(berth_session_spec, network_enabled, 80);
PIN(berth_session_spec, workspace_volume, 88);
PIN(berth_session_spec, working_dir, 112);
SIZE(berth_session_spec, 120);

PIN(berth_session_info, handle, 16);
PIN(berth_session_info, endpoint, 144);
SIZE(berth_session_info, 400);

PIN(berth_exec_request, timeout_ms, 4);
PIN(berth_exec_request, argv, 8);
PIN(berth_exec_request, cwd, 40);
PIN(berth_exec_request, stdin_size, 56);
SIZE(berth_exec_request, 64);
SIZE(berth_exec_result, 16);

PIN(berth_dir_entry, name, 8);
PIN(berth_dir_entry, size, 16);
SIZE(berth_dir_entry, 32);
SIZE(berth_session_listing, 32);
PIN(berth_session_stats, pids, 24);
PIN(berth_session_stats, workspace_bytes, 32);
PIN(berth_session_stats, rootfs_bytes, 40);
SIZE(berth_session_stats, 48);
SIZE(berth_kv, 16);

PIN(berth_process_spec, flags, 4);
PIN(berth_process_spec, argv, 8);
PIN(berth_process_spec, cwd, 40);
PIN(berth_process_spec, timeout_ms, 48);
PIN(berth_process_spec, pty_rows, 52);
PIN(berth_process_spec, pty_cols, 54);
PIN(berth_process_spec, on_ready, 56);
PIN(berth_process_spec, ready_ctx, 64);
SIZE(berth_process_spec, 72);
PIN(berth_process_event, type, 4);
PIN(berth_process_event, stream, 8);
PIN(berth_process_event, data, 16);
PIN(berth_process_event, size, 24);
PIN(berth_process_event, exit_code, 32);
PIN(berth_process_event, signal, 36);
PIN(berth_process_event, timed_out, 40);
PIN(berth_process_event, killed, 44);
PIN(berth_process_event, output_dropped, 48);
SIZE(berth_process_event, 56);
PIN(berth_negotiation, abi_minor, 12);
PIN(berth_negotiation, api, 16);
SIZE(berth_negotiation, 24);
#endif
_Static_assert(BERTH_SESSION_UNKNOWN == 4 && BERTH_ENTRY_OTHER == 3, "fallback enum values are frozen");
_Static_assert(BERTH_PROCESS_EVENT_NONE == 0 && BERTH_PROCESS_EVENT_EXIT == 2, "event values are frozen");

_Static_assert(sizeof(berth_status) == 4, "statuses are 32-bit");
_Static_assert(BERTH_OK == 0 && BERTH_UNAVAILABLE == 4 && BERTH_CANCELLED == 8, "status values are frozen");

/* The export macro must work in a C translation unit. */
static const berth_driver_api table = {BERTH_DRIVER_API_INIT, "c-test", "0.0.0", BERTH_CAP_EXEC, NULL, NULL, NULL, NULL,
                                       NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                                       /* 1.3: instance_capabilities, process_start ... process_release */
                                       NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL};
BERTH_DRIVER_EXPORT(table)

int main(void) {
  const berth_driver_api* t = berth_driver_entry(BERTH_ABI_VERSION_MAJOR, BERTH_ABI_VERSION_MINOR);
  if (t != &table || t->struct_size != sizeof(berth_driver_api) || t->abi_major != BERTH_ABI_VERSION_MAJOR ||
      t->abi_minor != BERTH_ABI_VERSION_MINOR) {
    fprintf(stderr, "BERTH_DRIVER_EXPORT / BERTH_DRIVER_API_INIT produced a wrong table\n");
    return 1;
  }
  {
    /* The generated negotiation answers the older of the two minors, and refuses another major. */
    berth_negotiation n = {sizeof n, BERTH_ABI_VERSION_MAJOR, BERTH_ABI_VERSION_MINOR + 5, 0, NULL};
    berth_negotiation older = {sizeof older, BERTH_ABI_VERSION_MAJOR, 1, 0, NULL};
    berth_negotiation other = {sizeof other, BERTH_ABI_VERSION_MAJOR + 1, 0, 0, NULL};
    if (berth_driver_negotiate(&n) != BERTH_OK || n.api != &table || n.abi_minor != BERTH_ABI_VERSION_MINOR ||
        berth_driver_negotiate(&older) != BERTH_OK || older.abi_minor != 1 ||
        berth_driver_negotiate(&other) != BERTH_UNSUPPORTED || berth_driver_negotiate(NULL) == BERTH_OK) {
      fprintf(stderr, "BERTH_DRIVER_EXPORT produced a wrong berth_driver_negotiate\n");
      return 1;
    }
  }
  puts("driver.h compiles as C11; layout pinned");
  return 0;
}
