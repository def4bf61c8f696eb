#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <utility>

#include "io/json.h"

namespace cosyfast::io {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; this reader copies it without swapping bytes");

namespace {

constexpr uint64_t kMaxHeaderBytes = 100u << 20;  // the safetensors limit

// Bytes per element of each safetensors dtype; 0 for an unknown name.
uint64_t DtypeSize(const std::string& dtype) {
  static const std::pair<const char*, uint64_t> kSizes[] = {
      {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"F8_E4M3", 1}, {"F8_E5M2", 1},
      {"I64", 8}, {"I32", 4}, {"I16", 2}, {"I8", 1},   {"U64", 8},     {"U32", 4},
      {"U16", 2}, {"U8", 1},  {"BOOL", 1}};
  for (const auto& [name, size] : kSizes) {
    if (dtype == name) return size;
  }
  return 0;
}

}  // namespace

int64_t TensorInfo::elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;  // checked against overflow when the header was read
  return n;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

File TryOpenRegularFile(const std::string& path, std::string* reason) {
  File f(nullptr, &std::fclose);
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    *reason = std::strerror(errno);
    return f;
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    *reason = "not a regular file (a FIFO, device or directory cannot be one)";
    return f;
  }
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  f.reset(::fdopen(fd, "rb"));
  if (!f) {
    *reason = std::strerror(errno);
    ::close(fd);
  }
  return f;
}

File OpenRegularFile(const std::string& path) {
  std::string reason;
  File f = TryOpenRegularFile(path, &reason);
  if (!f) throw std::runtime_error(path + ": cannot open: " + reason);
  return f;
}

void SafetensorsFile::Fail(const std::string& what) const { throw std::runtime_error(path_ + ": " + what); }

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  file_ = OpenRegularFile(path);
  std::FILE* f = file_.get();
  if (fseeko(f, 0, SEEK_END) != 0) Fail("cannot seek");
  const off_t file_size = ftello(f);
  if (file_size < 0 || fseeko(f, 0, SEEK_SET) != 0) Fail("cannot seek");
  if (file_size < 8) {
    Fail("is " + std::to_string(file_size) + " bytes long, too short for a safetensors file (an 8-byte header length first)");
  }
  unsigned char len_bytes[8];
  if (std::fread(len_bytes, 1, 8, f) != 8) Fail("cannot read the header length");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | len_bytes[i];
  if (header_len > kMaxHeaderBytes || header_len > static_cast<uint64_t>(file_size) - 8) {
    Fail("the header length field says " + std::to_string(header_len) + " bytes but the file has " +
         std::to_string(file_size) + " bytes: not a safetensors file, or a truncated one");
  }
  std::string header(header_len, '\0');
  if (header_len && std::fread(header.data(), 1, header_len, f) != header_len) Fail("cannot read the header");
  data_start_ = 8 + header_len;
  data_size_ = static_cast<uint64_t>(file_size) - data_start_;

  Json root;
  try {
    root = ParseJson(header);
  } catch (const std::exception& e) {
    Fail(std::string("the header is not valid JSON (") + e.what() + "): not a safetensors file, or a corrupt one");
  }
  if (!root.is_object()) Fail("the header is not a JSON object");

  std::vector<std::pair<uint64_t, const std::string*>> ranges;  // begin, name (overlap check)
  for (const auto& item : root.items()) {
    const std::string& name = item.key();
    const Json& entry = item.value();
    if (name == "__metadata__") {
      if (!entry.is_object()) Fail("__metadata__ is not an object");
      for (const auto& member : entry.items()) {
        if (!member.value().is_string()) Fail("__metadata__[\"" + member.key() + "\"] is not a string");
        metadata_[member.key()] = JsonString(member.value());
      }
      continue;
    }
    const std::string where = "tensor '" + name + "'";
    TensorInfo info;
    try {
      const Json* dtype = JsonFind(entry, "dtype");
      const Json* shape = JsonFind(entry, "shape");
      const Json* offsets = JsonFind(entry, "data_offsets");
      if (!dtype || !shape || !offsets) throw std::runtime_error("needs dtype, shape and data_offsets");
      info.dtype = JsonString(*dtype);
      for (const Json& d : JsonArray(*shape)) {
        const int64_t v = JsonInt64(d);
        if (v < 0) throw std::runtime_error("has a negative dimension");
        info.shape.push_back(v);
      }
      const Json& range = JsonArray(*offsets);
      if (range.size() != 2) throw std::runtime_error("data_offsets must be [begin, end]");
      const int64_t begin = JsonInt64(range[0]), end = JsonInt64(range[1]);
      if (begin < 0 || end < begin) throw std::runtime_error("has data_offsets with end before begin");
      info.begin = static_cast<uint64_t>(begin);
      info.end = static_cast<uint64_t>(end);
    } catch (const std::exception& e) {
      Fail(where + ": bad header entry (" + e.what() + ")");
    }
    const uint64_t elem = DtypeSize(info.dtype);
    if (elem == 0) Fail(where + " has an unknown dtype '" + info.dtype + "'");
    uint64_t bytes = elem;
    for (int64_t d : info.shape) {
      if (__builtin_mul_overflow(bytes, static_cast<uint64_t>(d), &bytes) || bytes > (uint64_t{1} << 62)) {
        Fail(where + " has an impossibly large shape " + ShapeString(info.shape));
      }
    }
    if (info.end - info.begin != bytes) {
      Fail(where + " of dtype " + info.dtype + " and shape " + ShapeString(info.shape) + " needs " +
           std::to_string(bytes) + " bytes but its data_offsets span " + std::to_string(info.end - info.begin));
    }
    if (info.end > data_size_) {
      Fail(where + "'s data [" + std::to_string(info.begin) + ", " + std::to_string(info.end) +
           ") runs past the end of the data region (" + std::to_string(data_size_) +
           " bytes): the file is truncated or corrupt");
    }
    auto inserted = tensors_.emplace(name, std::move(info));
    ranges.emplace_back(inserted.first->second.begin, &inserted.first->first);
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) {
    const TensorInfo& prev = tensors_.at(*ranges[i - 1].second);
    if (ranges[i].first < prev.end) {
      Fail("tensors '" + *ranges[i - 1].second + "' and '" + *ranges[i].second + "' overlap in the data region");
    }
  }
}

const TensorInfo& SafetensorsFile::Info(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) Fail("has no tensor '" + name + "'");
  return it->second;
}

std::vector<float> SafetensorsFile::ReadF32(const std::string& name, const std::vector<int64_t>& shape) const {
  const TensorInfo& info = Info(name);
  if (info.dtype != "F32") Fail("tensor '" + name + "' has dtype " + info.dtype + ", expected F32");
  if (info.shape != shape) {
    Fail("tensor '" + name + "' has shape " + ShapeString(info.shape) + ", expected " + ShapeString(shape));
  }
  std::vector<float> out(static_cast<size_t>(info.elements()));
  std::FILE* f = file_.get();
  if (fseeko(f, static_cast<off_t>(data_start_ + info.begin), SEEK_SET) != 0 ||
      (!out.empty() && std::fread(out.data(), sizeof(float), out.size(), f) != out.size())) {
    Fail("cannot read tensor '" + name + "'");
  }
  return out;
}

}  // namespace cosyfast::io
