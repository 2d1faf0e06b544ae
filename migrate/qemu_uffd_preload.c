// libsod_qemu_uffd.so: preloaded into the QEMU processes sod starts (LD_PRELOAD), it gives the
// RAM check a write log of guest RAM that does not depend on QEMU (migrate/ram_write_log.h).
//
// A userfaultfd watches the address space of the process that created it, so this is the one
// piece that must run inside QEMU: at load time it creates a userfaultfd, enables asynchronous
// write protection on it (the kernel resolves every write fault by itself and only records that
// the page was written: nothing ever waits for sod), and leaves it at the descriptor number named
// by SOD_QEMU_UFFD_FD, close-on-exec. Nothing is registered here and nothing else changes: until
// sod's engine takes a copy of the descriptor (pidfd_getfd) and registers the guest RAM with it,
// the descriptor is inert. When anything fails (an old kernel, no permission) it leaves no
// descriptor and sod falls back to reading all of the RAM at the pause.
//
// Deliberately tiny and C: it runs in the hypervisor process before QEMU's main().
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "migrate/uffd_abi.h"

__attribute__((constructor)) static void sod_qemu_uffd(void) {
  const char* want = getenv(SOD_QEMU_UFFD_FD_ENV);
  if (want == NULL) return;
  const int target = atoi(want);
  // Not for the programs QEMU may exec.
  unsetenv(SOD_QEMU_UFFD_FD_ENV);
  if (target < 3 || fcntl(target, F_GETFD) != -1) return;  // taken: leave it alone
  int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {  // e.g. vm.unprivileged_userfaultfd=0 for a non-root QEMU: try the device
    int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
    if (dev < 0) return;
    fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
    close(dev);
    if (fd < 0) return;
  }
  struct uffdio_api api = {.api = UFFD_API, .features = SOD_UFFD_WRITE_LOG_FEATURES};
  if (ioctl(fd, UFFDIO_API, &api) != 0 || dup3(fd, target, O_CLOEXEC) < 0) {
    close(fd);
    return;
  }
  close(fd);
}
