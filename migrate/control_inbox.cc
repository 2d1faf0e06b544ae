#include "migrate/control_inbox.h"

#include "migrate/session.h"

namespace sod {

ControlInbox::~ControlInbox() { Join(); }

void ControlInbox::Start() { thread_ = std::thread([this] { Run(); }); }

void ControlInbox::Join() {
  if (thread_.joinable()) thread_.join();
}

void ControlInbox::Run() {
  for (;;) {
    Result<ControlMsg> item = Error(Errc::kInternal, "unset");
    Result<RecordView> rec = session_.ReceiveControlRecord();
    if (!rec.ok()) {
      item = rec.status();
    } else if (rec->header.type == RecordType::kRoundBoundary) {
      // The peer's progress echo: proof of life on the control channel, nothing to queue.
      if (Status s = DecodeRoundBoundary(rec->payload).status(); !s.ok()) item = s;
      else continue;
    } else if (rec->header.type == RecordType::kAbort) {
      auto a = DecodeAbort(rec->payload);
      item = a.ok() ? Error(Errc::kAborted, "peer " + session_.peer_host_id() + " aborted (" +
                                                std::string(ErrcName(a->code)) + "): " + a->reason)
                    : a.status();
    } else if (rec->header.type == RecordType::kControl) {
      item = DecodeControl(rec->payload);
    } else {
      item = Error(Errc::kState, "unexpected " + std::string(RecordTypeName(rec->header.type)) +
                                     " record on the control channel");
    }
    bool stop = !item.ok();
    {
      std::lock_guard<std::mutex> l(mu_);
      queue_.push_back(std::move(item));
    }
    cv_.notify_all();
    if (stop) return;
  }
}

Result<ControlMsg> ControlInbox::Next(std::chrono::milliseconds timeout, std::string_view what) {
  std::unique_lock<std::mutex> l(mu_);
  if (!cv_.wait_for(l, timeout, [&] { return !queue_.empty(); }))
    return Error(Errc::kTimeout, "no " + std::string(what) + " from the peer within " +
                                     std::to_string(timeout.count()) + " ms");
  Result<ControlMsg> item = std::move(queue_.front());
  if (item.ok()) queue_.pop_front();  // an error stays queued: it is final
  return item;
}

std::optional<Status> ControlInbox::PendingError() const {
  std::lock_guard<std::mutex> l(mu_);
  for (const auto& item : queue_)
    if (!item.ok()) return item.status();
  return std::nullopt;
}

}  // namespace sod
