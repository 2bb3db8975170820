"""A software prefetch hint (LLVM's ``llvm.prefetch``) callable from Numba kernels.

Why the data kernels use it: with many draws a block of rows takes a few microseconds of
arithmetic, during which the hardware prefetcher, which follows the stream of demand misses,
fetches little, so the next block's first rows arrive at the full memory latency. Hinting the next
block's lines while the current one is worked on hides that latency. A hint never faults and never
changes a result.
"""

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

# llvm.prefetch(ptr, rw, locality, cache type): a read (0), into L2 and closer (locality 2,
# x86 prefetcht1), of data (1).
_READ, _LOCALITY, _DATA_CACHE = 0, 2, 1


@intrinsic
def prefetch(typingctx, row, index):
    """Hint that ``row[index]`` (a 1-d array and an integer) will be read soon."""
    if not (isinstance(row, types.Array) and row.ndim == 1 and isinstance(index, types.Integer)):
        return None
    sig = types.void(row, index)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False)
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [ptr, ir.Constant(i32, _READ), ir.Constant(i32, _LOCALITY),
                          ir.Constant(i32, _DATA_CACHE)])
        return context.get_dummy_value()

    return sig, codegen
