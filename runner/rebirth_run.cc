// rebirth-run: run a model.so exported by rebirth-tvm (a Relax VM executable) without Python.
//
//   rebirth-run MODEL.so --input x.npy [--input y.npy ...] [--output out.npy]
//               [--warmup N] [--repeat N] [--json]
//
// Reads each input from a .npy file (C order, little endian), runs `main` (warm-up runs, then N
// timed runs), writes the outputs to .npy (out.npy for one output, out_0.npy, out_1.npy, ... for
// several) and prints the latency (min / median / max) and the process's peak RSS.
// Any failure prints one line, "error: ...", to stderr and exits with 1 (2 for bad usage).
//
// Only tvm_ffi headers are used: the wheel's tvm/runtime headers include files the wheel does
// not ship. libtvm_runtime.so is still linked (see CMakeLists.txt) because loading it registers
// the Relax VM that `vm_load_executable` needs.
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <limits.h>
#include <sys/resource.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace ffi = tvm::ffi;

namespace {

// A failure the user caused or can fix; main() prints it as one line.
struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// TVM's kernels assume 64-byte aligned buffers.
struct AlignedAlloc {
  void AllocData(DLTensor* t) {
    size_t bytes = (ffi::GetDataSize(*t) + 63) / 64 * 64;
    t->data = std::aligned_alloc(64, bytes ? bytes : 64);
    if (t->data == nullptr) throw Failure("out of memory allocating an input tensor");
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

// ---- .npy ------------------------------------------------------------------------------------

struct DType {
  const char* descr;  // numpy's, without the byte-order character
  DLDataType dl;
};

const DType kDTypes[] = {
    {"f4", {kDLFloat, 32, 1}}, {"f2", {kDLFloat, 16, 1}}, {"f8", {kDLFloat, 64, 1}},
    {"i1", {kDLInt, 8, 1}},    {"i2", {kDLInt, 16, 1}},   {"i4", {kDLInt, 32, 1}},
    {"i8", {kDLInt, 64, 1}},   {"u1", {kDLUInt, 8, 1}},   {"u2", {kDLUInt, 16, 1}},
    {"u4", {kDLUInt, 32, 1}},  {"u8", {kDLUInt, 64, 1}},  {"b1", {kDLBool, 8, 1}},
};

std::string DescrOf(DLDataType dtype) {
  for (const DType& d : kDTypes) {
    if (d.dl.code == dtype.code && d.dl.bits == dtype.bits && dtype.lanes == 1) {
      return (dtype.bits == 8 ? "|" : "<") + std::string(d.descr);
    }
  }
  throw Failure("the model returned a tensor of a dtype .npy cannot hold (code " +
                std::to_string(dtype.code) + ", " + std::to_string(dtype.bits) + " bits)");
}

std::string DTypeName(DLDataType dtype) {
  const char* kinds[] = {"int", "uint", "float", "handle", "bfloat", "complex", "bool"};
  std::string kind = dtype.code < 7 ? kinds[dtype.code] : "code" + std::to_string(dtype.code);
  return kind == "bool" ? kind : kind + std::to_string(dtype.bits);
}

// The value of `key` in a .npy header dict, e.g. "'<f4'" or "(1, 3, 224, 224)".
std::string HeaderField(const std::string& header, const std::string& key, const std::string& path) {
  size_t at = header.find("'" + key + "'");
  if (at == std::string::npos) throw Failure(path + ": not a .npy file (no '" + key + "' in its header)");
  at = header.find(':', at);
  size_t start = at == std::string::npos ? at : header.find_first_not_of(' ', at + 1);
  if (start == std::string::npos) throw Failure(path + ": bad .npy header");
  size_t end = header[start] == '(' ? header.find(')', start) : header.find_first_of(",}", start);
  if (end == std::string::npos) throw Failure(path + ": bad .npy header");
  return header.substr(start, end - start + (header[start] == '(' ? 1 : 0));
}

ffi::Tensor ReadNpy(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw Failure("cannot open input " + path + ": " + std::strerror(errno));
  char magic[8];
  if (!file.read(magic, 8) || std::memcmp(magic, "\x93NUMPY", 6) != 0) {
    throw Failure(path + ": not a .npy file (bad magic)");
  }
  uint32_t header_len = 0;
  unsigned char len_bytes[4] = {0, 0, 0, 0};
  if (magic[6] < 1 || magic[6] > 3) throw Failure(path + ": .npy format version " + std::to_string(magic[6]) + " is not supported");
  int len_size = magic[6] == 1 ? 2 : 4;  // version 1.0 has a 2-byte header length, later 4
  if (!file.read(reinterpret_cast<char*>(len_bytes), len_size)) throw Failure(path + ": truncated .npy header");
  for (int i = len_size - 1; i >= 0; --i) header_len = header_len * 256 + len_bytes[i];
  std::string header(header_len, '\0');
  if (!file.read(&header[0], header_len)) throw Failure(path + ": truncated .npy header");

  std::string descr = HeaderField(header, "descr", path);
  if (HeaderField(header, "fortran_order", path) != "False") {
    throw Failure(path + ": Fortran-ordered arrays are not supported; save with np.ascontiguousarray");
  }
  if (descr.size() < 2) throw Failure(path + ": bad .npy header");
  descr = descr.substr(1, descr.size() - 2);  // drop the quotes
  if (descr.size() != 3 || descr[0] == '>') {
    throw Failure(path + ": dtype " + descr + " is not supported (little-endian numeric types only)");
  }
  const DType* dtype = nullptr;
  for (const DType& d : kDTypes) {
    if (descr.compare(1, 2, d.descr) == 0) dtype = &d;
  }
  if (dtype == nullptr) throw Failure(path + ": dtype " + descr + " is not supported");

  std::vector<int64_t> shape;
  std::string dims = HeaderField(header, "shape", path);
  if (dims.size() < 2 || dims.front() != '(') throw Failure(path + ": bad .npy header (shape " + dims + ")");
  std::stringstream stream(dims.substr(1, dims.size() - 2));
  for (std::string item; std::getline(stream, item, ',');) {
    if (item.find_first_not_of(' ') == std::string::npos) continue;
    char* end = nullptr;
    long long dim = std::strtoll(item.c_str(), &end, 10);
    if (end == item.c_str() || dim < 0) throw Failure(path + ": bad .npy header (shape " + dims + ")");
    shape.push_back(dim);
  }
  ffi::Tensor tensor = ffi::Tensor::FromNDAlloc(AlignedAlloc(), ffi::Shape(shape), dtype->dl, DLDevice{kDLCPU, 0});
  size_t bytes = ffi::GetDataSize(static_cast<size_t>(tensor.numel()), tensor.dtype());
  if (!file.read(static_cast<char*>(tensor.data_ptr()), static_cast<std::streamsize>(bytes))) {
    throw Failure(path + ": holds fewer bytes than its header's shape " + dims + " needs");
  }
  return tensor;
}

void WriteNpy(const std::string& path, const ffi::Tensor& tensor) {
  if (tensor.device().device_type != kDLCPU || !tensor.IsContiguous()) {
    throw Failure("the model returned a tensor that is not a contiguous CPU tensor");
  }
  std::string shape = "(";
  for (int i = 0; i < tensor.ndim(); ++i) shape += std::to_string(tensor.shape()[i]) + (tensor.ndim() == 1 ? "," : i + 1 < tensor.ndim() ? ", " : "");
  shape += ")";
  std::string header = "{'descr': '" + DescrOf(tensor.dtype()) + "', 'fortran_order': False, 'shape': " + shape + ", }";
  // Magic (6) + version (2) + length (2) + header + '\n' is padded to a multiple of 64.
  size_t total = 10 + header.size() + 1;
  header += std::string((64 - total % 64) % 64, ' ') + "\n";
  std::string temporary = path + ".part";
  {
    std::ofstream file(temporary, std::ios::binary);
    if (!file) throw Failure("cannot write " + path + ": " + std::strerror(errno));
    auto fail = [&]() {
      file.close();
      std::remove(temporary.c_str());
      throw Failure("cannot write " + path + " (disk full?)");
    };
    uint16_t len = static_cast<uint16_t>(header.size());
    const unsigned char prefix[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0,
                                      static_cast<unsigned char>(len & 0xff), static_cast<unsigned char>(len >> 8)};
    file.write(reinterpret_cast<const char*>(prefix), 10);
    file << header;
    file.write(static_cast<const char*>(tensor.data_ptr()) + tensor.byte_offset(),
               static_cast<std::streamsize>(ffi::GetDataSize(static_cast<size_t>(tensor.numel()), tensor.dtype())));
    file.close();  // flushes: a full disk shows here
    if (!file) fail();
  }
  if (std::rename(temporary.c_str(), path.c_str()) != 0) throw Failure("cannot write " + path + ": " + std::strerror(errno));
}

// ---- command line ----------------------------------------------------------------------------

struct Options {
  std::string model;
  std::vector<std::string> inputs;
  std::string output;
  int warmup = 3;
  int repeat = 10;
  bool json = false;
};

const char kUsage[] =
    "usage: rebirth-run MODEL.so --input X.npy [--input Y.npy ...] [--output OUT.npy] "
    "[--warmup N (default 3)] [--repeat N (default 10)] [--json]";

int ParseCount(const std::string& flag, const std::string& value, int minimum) {
  char* end = nullptr;
  long n = std::strtol(value.c_str(), &end, 10);
  if (value.empty() || *end != '\0' || n < minimum || n > 1000000) {
    throw Failure(flag + " needs a whole number >= " + std::to_string(minimum) + ", got '" + value + "'");
  }
  return static_cast<int>(n);
}

Options ParseArgs(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw Failure(arg + " needs a value; " + kUsage);
      return argv[++i];
    };
    if (arg == "-h" || arg == "--help") {
      std::cout << kUsage << "\n";
      std::exit(0);
    } else if (arg == "--input") {
      options.inputs.push_back(value());
    } else if (arg == "--output") {
      options.output = value();
    } else if (arg == "--warmup") {
      options.warmup = ParseCount(arg, value(), 0);
    } else if (arg == "--repeat") {
      options.repeat = ParseCount(arg, value(), 1);
    } else if (arg == "--json") {
      options.json = true;
    } else if (arg.rfind("--", 0) == 0 || !options.model.empty()) {
      throw Failure("unexpected argument '" + arg + "'; " + kUsage);
    } else {
      options.model = arg;
    }
  }
  if (options.model.empty() || options.inputs.empty()) throw Failure(std::string("a model and at least one --input are needed; ") + kUsage);
  return options;
}

// ---- running ---------------------------------------------------------------------------------

std::vector<ffi::Tensor> Flatten(const ffi::Any& value) {
  if (auto tensor = value.as<ffi::Tensor>()) return {*tensor};
  std::vector<ffi::Tensor> out;
  for (const ffi::Any& item : value.cast<ffi::Array<ffi::Any>>()) {
    for (const ffi::Tensor& t : Flatten(item)) out.push_back(t);
  }
  return out;
}

std::string ShapeText(const ffi::Tensor& t) {
  std::string text = "(";
  for (int i = 0; i < t.ndim(); ++i) text += std::to_string(t.shape()[i]) + (i + 1 < t.ndim() ? ", " : "");
  return text + ")";
}

// The first line of a TVM error message (the rest is a backtrace-like context).
std::string FirstLine(const std::string& text) {
  std::stringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    if (line.find_first_not_of(" \t") != std::string::npos) return line;
  }
  return "unknown error";
}

// TVM's checks read "Check failed: <C++ condition> : <what is wrong>"; a user needs the second part.
std::string Explain(const ffi::Error& err) {
  std::string message = FirstLine(err.message());
  if (message.rfind("Check failed:", 0) == 0) {
    for (const char* separator : {" is false: ", " : "}) {
      size_t at = message.find(separator);
      if (at != std::string::npos) {
        std::string detail = message.substr(at + std::strlen(separator));
        return detail + " (" + message.substr(0, at) + ")";
      }
    }
  }
  return err.kind() + ": " + message;
}

// This process's peak resident memory. VmHWM belongs to this program's address space;
// getrusage's ru_maxrss is not used where VmHWM exists because Linux carries it over exec, so a
// runner started from a big process (Python) would report its parent's peak.
double PeakRssBytes() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmHWM:", 0) == 0) return std::strtod(line.c_str() + 6, nullptr) * 1024.0;  // kB
  }
  struct rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) * 1024.0;  // Linux reports KiB
}

int Run(const Options& options) {
  {
    std::ifstream probe(options.model, std::ios::binary);
    if (!probe) throw Failure("cannot open model " + options.model + ": " + std::strerror(errno));
  }
  std::vector<ffi::Tensor> inputs;
  for (const std::string& path : options.inputs) inputs.push_back(ReadNpy(path));

  double rss_before_model = PeakRssBytes();  // the runner, the runtime and the inputs
  auto load_start = std::chrono::steady_clock::now();
  // dlopen searches the library path for a name without '/', not the current directory:
  // always hand it the absolute path of the file checked above.
  char resolved[PATH_MAX];
  if (realpath(options.model.c_str(), resolved) == nullptr) throw Failure("cannot open model " + options.model + ": " + std::strerror(errno));
  ffi::Module library = ffi::Module::LoadFromFile(resolved);
  auto load_executable = library->GetFunction("vm_load_executable");
  if (!load_executable.has_value()) {
    throw Failure(options.model + " is not a Relax VM executable (export it with rebirth-tvm or tvm.compile + export_library)");
  }
  ffi::Module vm = (*load_executable)().cast<ffi::Module>();
  // (device type, device id, allocator): the pooled allocator reuses buffers across runs.
  vm->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, 2);
  auto main_lookup = vm->GetFunction("main");
  if (!main_lookup.has_value()) throw Failure(options.model + " has no function 'main'");
  ffi::Function main_function = *main_lookup;
  double load_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - load_start).count();

  std::vector<ffi::AnyView> args(inputs.begin(), inputs.end());
  auto call = [&]() {
    ffi::Any result;
    main_function.CallPacked(args.data(), static_cast<int32_t>(args.size()), &result);
    return result;
  };
  ffi::Any result;
  for (int i = 0; i < options.warmup; ++i) {
    result = ffi::Any();  // the previous outputs are freed before the next run (peak RSS)
    result = call();  // the first run also checks the inputs
  }
  std::vector<double> times;
  for (int i = 0; i < options.repeat; ++i) {
    result = ffi::Any();
    auto start = std::chrono::steady_clock::now();
    result = call();
    times.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(times.begin(), times.end());
  double median = times.size() % 2 ? times[times.size() / 2] : (times[times.size() / 2 - 1] + times[times.size() / 2]) / 2;

  std::vector<ffi::Tensor> outputs = Flatten(result);
  std::vector<std::string> written;
  for (const ffi::Tensor& t : outputs) {  // check them all before writing any
    if (t.device().device_type != kDLCPU || !t.IsContiguous()) throw Failure("the model returned a tensor that is not a contiguous CPU tensor");
    DescrOf(t.dtype());
  }
  if (!options.output.empty()) {
    std::string stem = options.output, suffix;
    if (stem.size() > 4 && stem.compare(stem.size() - 4, 4, ".npy") == 0) {
      suffix = ".npy";
      stem.resize(stem.size() - 4);
    }
    for (size_t i = 0; i < outputs.size(); ++i) {
      std::string path = outputs.size() == 1 ? options.output : stem + "_" + std::to_string(i) + suffix;
      WriteNpy(path, outputs[i]);
      written.push_back(path);
    }
  }
  double rss = PeakRssBytes();
  if (options.json) {
    std::printf("{\"load_ms\": %.4f, \"latency_ms\": {\"min\": %.4f, \"median\": %.4f, \"max\": %.4f}, \"runs\": %zu, "
                "\"warmup\": %d, \"peak_rss_bytes\": %.0f, \"peak_rss_increase_bytes\": %.0f, \"outputs\": [",
                load_ms, times.front(), median, times.back(), times.size(), options.warmup, rss, rss - rss_before_model);
    for (size_t i = 0; i < outputs.size(); ++i) {
      std::printf("%s{\"shape\": \"%s\", \"dtype\": \"%s\"}", i ? ", " : "", ShapeText(outputs[i]).c_str(),
                  DTypeName(outputs[i].dtype()).c_str());
    }
    std::printf("]}\n");
  } else {
    for (size_t i = 0; i < outputs.size(); ++i) {
      std::printf("output %zu: %s %s%s%s\n", i, DTypeName(outputs[i].dtype()).c_str(), ShapeText(outputs[i]).c_str(),
                  written.empty() ? "" : " -> ", written.empty() ? "" : written[i].c_str());
    }
    std::printf("load: %.2f ms\n", load_ms);
    std::printf("latency: min %.3f ms, median %.3f ms, max %.3f ms (%zu runs after %d warm-up)\n", times.front(), median,
                times.back(), times.size(), options.warmup);
    std::printf("peak RSS: %.1f MiB (%.1f MiB for the model: load and runs)\n", rss / (1024.0 * 1024.0),
                (rss - rss_before_model) / (1024.0 * 1024.0));
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  try {
    options = ParseArgs(argc, argv);
  } catch (const std::exception& err) {
    std::fprintf(stderr, "error: %s\n", err.what());
    return 2;
  }
  try {
    return Run(options);
  } catch (const ffi::Error& err) {
    // TVM's own checks (wrong input shape or dtype, a library that does not load) land here.
    std::string text = Explain(err);
    for (size_t at; (at = text.find("  ")) != std::string::npos;) text.erase(at, 1);
    std::fprintf(stderr, "error: %s\n", text.c_str());
  } catch (const std::exception& err) {
    std::fprintf(stderr, "error: %s\n", FirstLine(err.what()).c_str());
  }
  return 1;
}
