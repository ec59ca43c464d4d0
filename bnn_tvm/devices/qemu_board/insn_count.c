/*
 * Deterministic count of executed guest instructions, as a QEMU TCG plugin (qemu-user 7.2).
 *
 * Every translated block adds its instruction count to one counter with an inline add (no
 * callback per block, so the emulation stays fast).  The guest brackets the region it wants
 * counted with a reserved system call number (BNN_MARKER_SYSCALL, unused by Linux on arm and
 * aarch64; the kernel side just answers -ENOSYS):
 *     syscall(BNN_MARKER_SYSCALL, 1)  start: remember the counter
 *     syscall(BNN_MARKER_SYSCALL, 2)  stop: write the instructions since start to OUT.<pid>
 * where OUT is the plugin argument out=PATH.  The plugin API of QEMU 7.2 cannot write guest
 * registers or memory, hence the file.  Debian ships no qemu-plugin.h, so the few declarations
 * used here are written out below; they follow QEMU 7.2's include/qemu/qemu-plugin.h
 * (plugin API version 1).
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define QEMU_PLUGIN_EXPORT __attribute__((visibility("default")))

typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t qemu_info_t; /* only passed through */
struct qemu_plugin_tb;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };

typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_vcpu_syscall_cb_t)(qemu_plugin_id_t id, unsigned int vcpu_index,
                                              int64_t num, uint64_t a1, uint64_t a2, uint64_t a3,
                                              uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7,
                                              uint64_t a8);

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op,
                                              void *ptr, uint64_t imm);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
void qemu_plugin_register_vcpu_syscall_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_syscall_cb_t cb);

QEMU_PLUGIN_EXPORT int qemu_plugin_version = 1;

#define BNN_MARKER_SYSCALL 4242
#define BNN_MARKER_START 1
#define BNN_MARKER_STOP 2

static uint64_t executed;
static uint64_t started_at;
static char out_path[4096];

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &executed,
                                             qemu_plugin_tb_n_insns(tb));
}

static void write_count(uint64_t count)
{
    char path[4200];
    snprintf(path, sizeof path, "%s.%ld", out_path, (long)getpid());
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        perror(path);
        return;
    }
    fprintf(f, "%" PRIu64 "\n", count);
    fclose(f);
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu_index, int64_t num, uint64_t a1,
                       uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6,
                       uint64_t a7, uint64_t a8)
{
    (void)id; (void)vcpu_index; (void)a2; (void)a3; (void)a4; (void)a5; (void)a6; (void)a7; (void)a8;
    if (num != BNN_MARKER_SYSCALL) {
        return;
    }
    if (a1 == BNN_MARKER_START) {
        started_at = executed;
    } else if (a1 == BNN_MARKER_STOP && out_path[0] != '\0') {
        write_count(executed - started_at);
    }
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc,
                                           char **argv)
{
    (void)info;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) == 0) {
            snprintf(out_path, sizeof out_path, "%s", argv[i] + 4);
        }
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
    return 0;
}
