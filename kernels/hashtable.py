"""Hashing helpers shared by the open-addressing tables of the account kernels.

Account and peer ids are already 64-bit hashes, but tests and callers may pass small integers, so
every table position and fingerprint goes through the murmur3 ``fmix64`` finaliser first (a
bijection on 64-bit integers, so distinct ids keep distinct mixed values).

- ``home_slot(key, capacity)``: the first slot of a key's probe sequence, ``(hi32(mix) * capacity)
  >> 32`` (Lemire's multiply-shift range reduction; any capacity up to 2**32, no power of two needed).
- ``fingerprint32(key)``: the low 32 bits of the mixed key. The recipient structures of the account
  kernels identify a peer by this fingerprint.
- ``prefetch(array, row, col)``: a cache prefetch hint (``llvm.prefetch``) for software pipelining.
- ``copy_block(dst, dst_start, src, src_start, count)``: copy ``count`` items between 1-D arrays as
  one ``llvm.memcpy`` (a constant count becomes a few wide loads and stores).
"""

import numpy as np
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

ir = cgutils.ir  # llvmlite's IR module, as numba's code generator uses it

MAX_TABLE_CAPACITY = 1 << 32  # home_slot multiplies a 32-bit hash by the capacity in 64 bits

_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB9FE1A85EC53)
_S33 = np.uint64(33)
_S32 = np.uint64(32)
_LOW32 = np.uint64(0xFFFFFFFF)


@njit(cache=True, nogil=True, inline="always")
def mix64(x):
    """murmur3 ``fmix64`` of a uint64 (a bijection with good avalanche)."""
    x = np.uint64(x)
    x ^= x >> _S33
    x *= _M1
    x ^= x >> _S33
    x *= _M2
    x ^= x >> _S33
    return x


@njit(cache=True, nogil=True, inline="always")
def home_slot(key, capacity):
    """First slot of ``key``'s probe sequence in a table of ``capacity`` slots (0 <= slot < capacity)."""
    return np.int64(((mix64(key) >> _S32) * np.uint64(capacity)) >> _S32)


@njit(cache=True, nogil=True, inline="always")
def fingerprint32(key):
    """32-bit fingerprint of a 64-bit id (low half of its ``fmix64``), as uint32."""
    return np.uint32(mix64(key) & _LOW32)


@intrinsic
def prefetch(typingctx, array, row, col):
    """Hint the CPU to fetch the cache line of ``array[row, col]`` (``array[row]`` if 1-D,
    ``array[row, col, 0]`` if 3-D).

    A prefetch never faults and has no visible effect besides timing; the kernels use it to start
    the memory accesses of the next events while the current one is processed.
    """
    if not isinstance(array, types.Array) or array.ndim not in (1, 2, 3):
        return None
    if not isinstance(row, types.Integer) or not isinstance(col, types.Integer):
        return None
    sig = types.void(array, row, col)

    def codegen(context, builder, signature, args):
        array_type, row_type, col_type = signature.args
        ary = context.make_array(array_type)(context, builder, args[0])
        indices = [
            context.cast(builder, args[1], row_type, types.intp),
            context.cast(builder, args[2], col_type, types.intp),
            context.get_constant(types.intp, 0),
        ][: array_type.ndim]
        pointer = cgutils.get_item_pointer2(
            context,
            builder,
            data=ary.data,
            shape=cgutils.unpack_tuple(builder, ary.shape),
            strides=cgutils.unpack_tuple(builder, ary.strides),
            layout=array_type.layout,
            inds=indices,
        )
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [cgutils.voidptr_t, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        # read (0), high temporal locality (3), data cache (1)
        args = [
            builder.bitcast(pointer, cgutils.voidptr_t),
            *(ir.Constant(i32, v) for v in (0, 3, 1)),
        ]
        builder.call(fn, args)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def copy_block(typingctx, dst, dst_start, src, src_start, count):
    """``dst[dst_start : dst_start + count] = src[src_start : src_start + count]`` for 1-D arrays
    of one dtype, unchecked and non-overlapping, as one ``llvm.memcpy``: with a constant ``count``
    LLVM emits a few vector loads and stores (a loop of scalar copies stays scalar, since Numba
    disables the SLP vectorizer)."""
    if not (
        isinstance(dst, types.Array)
        and isinstance(src, types.Array)
        and dst.ndim == src.ndim == 1
        and dst.dtype == src.dtype
    ):
        return None
    if not all(isinstance(t, types.Integer) for t in (dst_start, src_start, count)):
        return None
    sig = types.void(dst, dst_start, src, src_start, count)

    def codegen(context, builder, signature, args):
        dst_type, dst_start_type, src_type, src_start_type, count_type = signature.args

        def pointer(array_type, array, start, start_type):
            ary = context.make_array(array_type)(context, builder, array)
            index = context.cast(builder, start, start_type, types.intp)
            return builder.gep(ary.data, [index])

        itemsize = context.get_abi_sizeof(context.get_data_type(dst_type.dtype))
        cgutils.raw_memcpy(
            builder,
            pointer(dst_type, args[0], args[1], dst_start_type),
            pointer(src_type, args[2], args[3], src_start_type),
            context.cast(builder, args[4], count_type, types.intp),
            itemsize,
        )
        return context.get_dummy_value()

    return sig, codegen
