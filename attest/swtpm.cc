#include "attest/swtpm.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>
#include <utility>

#include "base/child_process.h"
#include "base/fd.h"
#include "base/files.h"

namespace sod::attest {

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr uint16_t kPortFirst = 20000;  // random server ports: even numbers in [first, last)
constexpr uint16_t kPortLast = 32000;
constexpr int kStartAttempts = 8;  // swtpm restarts after losing a port race
constexpr int kPortProbes = 64;    // random pairs probed per attempt

sockaddr_in Loopback(uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}

// True when 127.0.0.1:port can be bound now.
bool PortFree(uint16_t port) {
  UniqueFd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (s.get() < 0) return false;
  sockaddr_in a = Loopback(port);
  return ::bind(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
}

// A random even port P in [kPortFirst, kPortLast) with P and P+1 free, or 0.
uint16_t PickPortPair() {
  static thread_local std::mt19937 rng(std::random_device{}());
  std::uniform_int_distribution<int> dist(kPortFirst / 2, kPortLast / 2 - 1);
  for (int i = 0; i < kPortProbes; ++i) {
    const uint16_t p = static_cast<uint16_t>(dist(rng) * 2);
    if (PortFree(p) && PortFree(static_cast<uint16_t>(p + 1))) return p;
  }
  return 0;
}

// True when a TPM on 127.0.0.1:port answers TPM2_GetRandom(8) with TPM_RC_SUCCESS before
// `deadline` (it is up and past TPM2_Startup).
bool TpmAnswers(uint16_t port, Clock::time_point deadline) {
  UniqueFd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (s.get() < 0) return false;
  sockaddr_in a = Loopback(port);
  if (::connect(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    if (errno != EINPROGRESS || !PollUntil(s.get(), POLLOUT, deadline)) return false;
    int err = 0;
    socklen_t len = sizeof(err);
    if (::getsockopt(s.get(), SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) return false;
  }
  // TPM2_GetRandom: tag TPM_ST_NO_SESSIONS, size 12, TPM_CC_GetRandom, bytesRequested 8.
  static constexpr uint8_t kGetRandom[12] = {0x80, 0x01, 0x00, 0x00, 0x00, 0x0c,
                                             0x00, 0x00, 0x01, 0x7b, 0x00, 0x08};
  size_t sent = 0;
  while (sent < sizeof(kGetRandom)) {
    ssize_t n = ::send(s.get(), kGetRandom + sent, sizeof(kGetRandom) - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<size_t>(n);
    } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      if (!PollUntil(s.get(), POLLOUT, deadline)) return false;
    } else {
      return false;
    }
  }
  // Response header: tag (2), size (4), response code (4).
  uint8_t hdr[10];
  size_t got = 0;
  while (got < sizeof(hdr)) {
    ssize_t n = ::recv(s.get(), hdr + got, sizeof(hdr) - got, 0);
    if (n > 0) {
      got += static_cast<size_t>(n);
    } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      if (!PollUntil(s.get(), POLLIN, deadline)) return false;
    } else {
      return false;
    }
  }
  const uint32_t rc =
      (uint32_t{hdr[6]} << 24) | (uint32_t{hdr[7]} << 16) | (uint32_t{hdr[8]} << 8) | hdr[9];
  return hdr[0] == 0x80 && hdr[1] == 0x01 && rc == 0;
}

// True when process `pid` holds the socket listening on 127.0.0.1:port, so an answer on that
// port comes from it and not from a process that took the port first (Linux /proc).
bool ListensOn(pid_t pid, uint16_t port) {
  std::ifstream tcp("/proc/net/tcp");
  if (!tcp) return false;
  char want[32];
  std::snprintf(want, sizeof(want), "0100007F:%04X", port);
  std::vector<std::string> inodes;
  std::string line;
  std::getline(tcp, line);  // header
  while (std::getline(tcp, line)) {
    // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
    std::istringstream f(line);
    std::string sl, local, remote, st, queues, timer, retr, uid, timeout, inode;
    if (!(f >> sl >> local >> remote >> st >> queues >> timer >> retr >> uid >> timeout >> inode))
      continue;
    if (local == want && st == "0A") inodes.push_back("socket:[" + inode + "]");
  }
  if (inodes.empty()) return false;
  std::error_code ec;
  const std::string fd_dir = "/proc/" + std::to_string(pid) + "/fd";
  for (std::filesystem::directory_iterator it(fd_dir, ec), end; !ec && it != end;
       it.increment(ec)) {
    std::error_code link_ec;
    const std::string target = std::filesystem::read_symlink(it->path(), link_ec).string();
    if (!link_ec && std::find(inodes.begin(), inodes.end(), target) != inodes.end()) return true;
  }
  return false;
}

Result<pid_t> SpawnSwtpm(const SimulatedTpmOptions& options, const std::string& state_dir,
                         const std::string& log_path, uint16_t port) {
  const std::string p = std::to_string(port);
  const std::string ctrl = std::to_string(port + 1);
  std::vector<std::string> args = {
      options.binary,
      "socket",
      "--tpm2",
      "--tpmstate",
      "dir=" + state_dir,
      "--server",
      "type=tcp,port=" + p + ",bindaddr=127.0.0.1",
      "--ctrl",
      "type=tcp,port=" + ctrl + ",bindaddr=127.0.0.1",
      "--flags",
      "not-need-init,startup-clear",
  };
  ChildSpec c;
  c.argv = std::move(args);
  c.log_path = log_path;
  c.truncate_log = true;
  Result<pid_t> pid = SpawnChild(c);
  if (!pid.ok()) return pid.status().WithContext("swtpm");
  return pid;
}

PcrDigest Sha256(ByteSpan data) {
  PcrDigest out{};
  unsigned int len = 0;
  // EVP_Digest of SHA-256 fails only when OpenSSL is broken beyond use; out stays zero then,
  // which no real PCR value equals.
  EVP_Digest(data.data(), data.size(), out.data(), &len, EVP_sha256(), nullptr);
  return out;
}

}  // namespace

// -----------------------------------------------------------------------------------------------

SimulatedTpm::SimulatedTpm(pid_t pid, uint16_t port, std::string state_dir, std::string log_path)
    : pid_(pid),
      port_(port),
      state_dir_(std::move(state_dir)),
      log_path_(std::move(log_path)),
      tcti_("swtpm:host=127.0.0.1,port=" + std::to_string(port)) {}

Result<std::unique_ptr<SimulatedTpm>> SimulatedTpm::Start(const std::string& state_dir,
                                                          SimulatedTpmOptions options) {
  if (state_dir.empty()) return Error(Errc::kInvalidArgument, "swtpm: empty state directory");
  if (options.binary.empty()) return Error(Errc::kInvalidArgument, "swtpm: empty binary name");
  if (options.port == 65535)
    return Error(Errc::kInvalidArgument, "swtpm: port 65535 leaves no control port");
  std::error_code ec;
  if (!std::filesystem::is_directory(state_dir, ec)) {
    std::filesystem::create_directories(state_dir, ec);
    if (!ec)
      std::filesystem::permissions(state_dir, std::filesystem::perms::owner_all,
                                   std::filesystem::perm_options::replace, ec);
    if (ec)
      return Error(Errc::kIo, "swtpm: creating state directory " + state_dir + ": " + ec.message());
  }
  const std::string log_path =
      options.log_path.empty() ? state_dir + "/swtpm.log" : options.log_path;
  const bool pick_ports = options.port == 0;
  // A swtpm a dead previous owner left on this directory (its pid file, its exact --tpmstate).
  if (options.end_orphan)
    EndOrphanFromPidFile(state_dir + "/swtpm.pid", "swtpm", "dir=" + state_dir);

  std::string last_error;
  for (int attempt = 0; attempt < (pick_ports ? kStartAttempts : 1); ++attempt) {
    const uint16_t port = pick_ports ? PickPortPair() : options.port;
    if (port == 0) return Error(Errc::kIo, "swtpm: no free loopback port pair found");
    SOD_ASSIGN_OR_RETURN(pid_t pid, SpawnSwtpm(options, state_dir, log_path, port));

    const auto deadline = Clock::now() + options.start_timeout;
    auto nap = milliseconds(2);
    for (;;) {
      int st = 0;
      const pid_t r = WaitPidNoHang(pid, st);
      if (r == pid || r < 0) {
        // It ended before answering: a lost port race, or a real problem (state locked, bad
        // binary) that the log explains.
        const std::string log = LogTail(log_path);
        last_error = "swtpm on port " + std::to_string(port) + " " +
                     (r == pid ? DescribeExit(st) : "vanished") + " before answering" +
                     (log.empty() ? "" : ": " + log);
        break;
      }
      if (TpmAnswers(port, std::min(deadline, Clock::now() + milliseconds(1000))) &&
          ListensOn(pid, port)) {
        // Lets the next start end this swtpm if our process dies without stopping it.
        std::ofstream(state_dir + "/swtpm.pid", std::ios::trunc) << pid << "\n";
        return std::unique_ptr<SimulatedTpm>(new SimulatedTpm(pid, port, state_dir, log_path));
      }
      if (Clock::now() >= deadline) {
        KillAndReapChild(pid);
        return Error(Errc::kTimeout, "swtpm on port " + std::to_string(port) +
                                         ": no answer within " +
                                         std::to_string(options.start_timeout.count()) + " ms");
      }
      std::this_thread::sleep_for(nap);
      nap = std::min(nap * 2, milliseconds(50));
    }
    if (last_error.find("in use") == std::string::npos) break;  // not a port race
  }
  return Error(Errc::kIo, last_error);
}

SimulatedTpm::~SimulatedTpm() { (void)Stop(); }

bool SimulatedTpm::TryReap() { return TryReapChild(pid_, reaped_); }

bool SimulatedTpm::Running() { return !TryReap(); }

Status SimulatedTpm::Stop(milliseconds grace) {
  if (TryReap()) return Status::Ok();
  std::error_code ec;
  std::filesystem::remove(state_dir_ + "/swtpm.pid", ec);
  return StopChild(pid_, reaped_, grace, "swtpm");
}

// -----------------------------------------------------------------------------------------------

PcrDigest BootEvent::Digest() const {
  return Sha256(ByteSpan(reinterpret_cast<const uint8_t*>(description.data()), description.size()));
}

std::vector<BootEvent> SimulatedBootEvents() {
  std::vector<BootEvent> events = {
      {0, "sod simulated firmware: core root of trust and platform firmware v1"},
      {1, "sod simulated firmware configuration: boot order disk0"},
      {2, "sod simulated option ROMs: none"},
      {3, "sod simulated option ROM configuration: none"},
      {4, "sod simulated bootloader: sod-boot v1"},
      {4, "sod simulated kernel: linux host kernel v1"},
      {5, "sod simulated boot configuration: GPT disk0"},
      {7, "sod simulated secure boot policy: enabled, db=sod test CA"},
  };
  for (uint32_t pcr = 0; pcr <= 7; ++pcr) events.push_back({pcr, "sod simulated separator"});
  return events;
}

PcrDigest PcrResetValue(uint32_t pcr) {
  PcrDigest v{};
  if (pcr >= 17 && pcr <= 22) v.fill(0xff);
  return v;
}

PcrValues ExpectedPcrsAfterBoot(PcrSelection selection) {
  std::array<PcrDigest, 24> pcrs{};
  for (uint32_t i = 0; i < pcrs.size(); ++i) pcrs[i] = PcrResetValue(i);
  for (const BootEvent& e : SimulatedBootEvents()) {
    const PcrDigest d = e.Digest();
    uint8_t buf[64];
    std::memcpy(buf, pcrs[e.pcr].data(), 32);
    std::memcpy(buf + 32, d.data(), 32);
    pcrs[e.pcr] = Sha256(ByteSpan(buf, sizeof(buf)));
  }
  PcrValues out;
  out.selection = selection;
  for (uint32_t i : selection.Indices()) out.values.push_back(pcrs[i]);
  return out;
}

Status SimulateMeasuredBoot(Tpm& tpm) {
  PcrSelection boot_pcrs;
  for (const BootEvent& e : SimulatedBootEvents()) boot_pcrs.mask |= 1u << e.pcr;
  SOD_ASSIGN_OR_RETURN(PcrValues now, tpm.ReadPcrs(boot_pcrs));
  for (const PcrDigest& v : now.values) {
    if (v != PcrDigest{})
      return Error(Errc::kState,
                   "simulated measured boot: the boot PCRs are not in their reset state (already "
                   "replayed since the TPM started?)");
  }
  for (const BootEvent& e : SimulatedBootEvents()) {
    SOD_RETURN_IF_ERROR(tpm.ExtendPcr(e.pcr, e.Digest())
                            .WithContext("simulated measured boot, PCR " + std::to_string(e.pcr)));
  }
  return Status::Ok();
}

}  // namespace sod::attest
