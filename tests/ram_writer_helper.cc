// A stand-in for QEMU in ram_write_log_test: maps a file shared and writable, as QEMU maps guest
// RAM, then obeys one-line commands on descriptor 3, answering "ok\n" on descriptor 4:
//   w PAGE    write one byte into that 4 KiB page through the mapping
//   r PAGE    read one byte of it (faults it in without writing)
//   u         unmap the file and map it again (elsewhere: a remapped RAM)
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  const int fd = open(argv[1], O_RDWR | O_CLOEXEC);
  struct stat st {};
  if (fd < 0 || fstat(fd, &st) != 0) return 3;
  const size_t len = static_cast<size_t>(st.st_size);
  auto map = [&] {
    void* m = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    return m == MAP_FAILED ? nullptr : static_cast<volatile char*>(m);
  };
  volatile char* ram = map();
  if (ram == nullptr) return 4;
  FILE* in = fdopen(3, "r");
  if (in == nullptr) return 5;
  char cmd = 0;
  unsigned long page = 0;
  char line[64];
  while (fgets(line, sizeof line, in) != nullptr) {
    const int n = sscanf(line, " %c %lu", &cmd, &page);
    if (n >= 1 && cmd == 'u') {
      volatile char* again = map();
      munmap(const_cast<char*>(ram), len);
      ram = again;
      if (ram == nullptr) return 6;
    } else if (n == 2 && page * 4096 < len && cmd == 'w') {
      ram[page * 4096 + 100] = static_cast<char>(ram[page * 4096 + 100] + 1);
    } else if (n == 2 && page * 4096 < len && cmd == 'r') {
      (void)ram[page * 4096];
    } else {
      return 7;
    }
    if (write(4, "ok\n", 3) != 3) return 8;
  }
  return 0;
}
