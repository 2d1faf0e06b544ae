// Builds QEMU 7.2 precopy migration streams byte by byte (migration/savevm.c, migration/ram.c),
// for the RAM stream tracker's unit tests and fuzz seeds (migrate/ram_stream.h). Only the pieces
// the tracker reads are modelled; device sections are opaque bytes.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "base/bytes.h"

namespace sod::testing {

class QemuStreamBuilder {
 public:
  static constexpr uint64_t kZero = 0x02, kMemSize = 0x04, kPage = 0x08, kEos = 0x10,
                            kContinue = 0x20;

  QemuStreamBuilder& U8(uint8_t v) {
    bytes.push_back(v);
    return *this;
  }
  QemuStreamBuilder& Be16(uint16_t v) { return U8(v >> 8).U8(v & 0xff); }
  QemuStreamBuilder& Be32(uint32_t v) { return Be16(v >> 16).Be16(v & 0xffff); }
  QemuStreamBuilder& Be64(uint64_t v) { return Be32(v >> 32).Be32(v & 0xffffffff); }
  QemuStreamBuilder& Str8(std::string_view s) {  // u8 length, then the bytes
    U8(static_cast<uint8_t>(s.size()));
    bytes.insert(bytes.end(), s.begin(), s.end());
    return *this;
  }
  QemuStreamBuilder& Raw(ByteSpan b) {
    bytes.insert(bytes.end(), b.begin(), b.end());
    return *this;
  }

  // Magic, version 3, and the configuration section naming the machine type.
  QemuStreamBuilder& Header(std::string_view machine = "pc-i440fx-7.2") {
    Be32(0x5145564d).Be32(3).U8(0x07).Be32(static_cast<uint32_t>(machine.size()));
    bytes.insert(bytes.end(), machine.begin(), machine.end());
    return *this;
  }
  // The RAM section's start: its setup lists the blocks; ends with EOS and the footer.
  QemuStreamBuilder& RamStart(uint32_t section_id,
                              const std::vector<std::pair<std::string, uint64_t>>& blocks) {
    U8(0x01).Be32(section_id).Str8("ram").Be32(0).Be32(4);
    uint64_t total = 0;
    for (const auto& b : blocks) total += b.second;
    Be64(total | kMemSize);
    for (const auto& [name, length] : blocks) Str8(name).Be64(length);
    return Eos().Footer(section_id);
  }
  QemuStreamBuilder& Part(uint32_t section_id) { return U8(0x02).Be32(section_id); }
  QemuStreamBuilder& End(uint32_t section_id) { return U8(0x03).Be32(section_id); }
  // A page record; an empty `block` continues the previous page's block.
  QemuStreamBuilder& Page(std::string_view block, uint64_t addr, ByteSpan page) {
    PageHeader(block, addr, kPage);
    return Raw(page);
  }
  QemuStreamBuilder& Zero(std::string_view block, uint64_t addr, uint8_t fill = 0) {
    PageHeader(block, addr, kZero);
    return U8(fill);
  }
  QemuStreamBuilder& Eos() { return Be64(kEos); }
  QemuStreamBuilder& Footer(uint32_t section_id) { return U8(0x7e).Be32(section_id); }
  // A device section (QEMU_VM_SECTION_FULL) with an opaque body, then QEMU_VM_EOF.
  QemuStreamBuilder& DevicesAndEof(uint32_t section_id, std::string_view name, ByteSpan body) {
    U8(0x04).Be32(section_id).Str8(name).Be32(0).Be32(1);
    Raw(body);
    return Footer(section_id).U8(0x00);
  }

  Bytes bytes;

 private:
  void PageHeader(std::string_view block, uint64_t addr, uint64_t kind) {
    if (block.empty()) {
      Be64(addr | kind | kContinue);
    } else {
      Be64(addr | kind);
      Str8(block);
    }
  }
};

}  // namespace sod::testing
