// Raw pointers of optional array arguments (None allowed), for the pybind11 registrations. The
// Python layer has checked dtypes, layouts and aliasing before these are called.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

namespace fastopt::bind {

inline const void* data_or_null(const pybind11::object& a) {
    return a.is_none() ? nullptr : a.cast<pybind11::array>().data();
}

inline void* mutable_data_or_null(const pybind11::object& a) {
    return a.is_none() ? nullptr : a.cast<pybind11::array>().mutable_data();
}

}  // namespace fastopt::bind
