// The kernel interfaces of the RAM write log (migrate/ram_write_log.h) that Debian 12's kernel
// headers (6.1) predate: asynchronous userfaultfd write protection (Linux 6.7) and the
// PAGEMAP_SCAN ioctl of /proc/PID/pagemap (Linux 6.7). Values from the kernel's UAPI (stable ABI:
// include/uapi/linux/userfaultfd.h and fs.h). C, for the preload library as well.
#pragma once

#include <linux/ioctl.h>
#include <linux/types.h>
#include <linux/userfaultfd.h>

// The environment variable that tells the preload library where to put the userfaultfd, and the
// number sod uses.
#define SOD_QEMU_UFFD_FD_ENV "SOD_QEMU_UFFD_FD"
#define SOD_QEMU_UFFD_FD 1000

#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif
// Async write protection, of shmem too, of pages not populated yet (protected by PTE markers).
#define SOD_UFFD_WRITE_LOG_FEATURES \
  (UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_HUGETLBFS_SHMEM | UFFD_FEATURE_WP_UNPOPULATED)

#ifndef PAGEMAP_SCAN
#define PAGE_IS_WPALLOWED (1 << 0)
#define PAGE_IS_WRITTEN (1 << 1)
struct page_region {
  __u64 start;
  __u64 end;
  __u64 categories;
};
#define PM_SCAN_WP_MATCHING (1 << 0)
#define PM_SCAN_CHECK_WPASYNC (1 << 1)
struct pm_scan_arg {
  __u64 size;
  __u64 flags;
  __u64 start;
  __u64 end;
  __u64 walk_end;
  __u64 vec;
  __u64 vec_len;
  __u64 max_pages;
  __u64 category_inverted;
  __u64 category_mask;
  __u64 category_anyof_mask;
  __u64 return_mask;
};
#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)
#endif
