"""Register-blocked microkernels written as LLVM IR, for what Numba cannot express in Python.

``eta_4rows_8draws`` computes linear predictors for four rows and eight draws with the draws in
the lanes of four <8 x double> accumulators: for each column j, one vector load of the eight
draws' coefficients, one broadcast of each row's z_ij and four fused multiply-adds. There is no
horizontal reduction and no tail loop, whatever D is. The same loops written in Python (sixteen
scalar running sums, ``likelihood._eta_4rows_4draws``) vectorise over j instead, and then need
sixteen horizontal sums per block and scalar tails for D mod 8; scalar accumulators for eight draws
were not packed into vectors by LLVM (measured 3x slower). One thread, rows in L2, S = 8: 24.7 ->
13.9 ns per row at D = 50, 44.6 -> 28.3 at D = 100. ``grad_4rows_8draws`` is its counterpart for
the gradient sums, with the group's eight sums per column kept transposed (D x 8).

The rows may be float32 or float64 (float32 values are widened; all arithmetic is float64). The
sum over j runs in order for each (row, draw), as a fused multiply-add chain starting at the
intercept, so results do not depend on the thread count.
"""

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

_F64 = ir.DoubleType()
_V8 = ir.VectorType(_F64, 8)
_I64 = ir.IntType(64)
_I32 = ir.IntType(32)
_BYTE_PTR = ir.IntType(8).as_pointer()


def _row_pointer(builder, data, stride, row, elem_ptr):
    """Pointer to the first element of ``row`` of an array with row ``stride`` in bytes."""
    base = builder.bitcast(data, _BYTE_PTR)
    return builder.bitcast(builder.gep(base, [builder.mul(row, stride)]), elem_ptr)


def _four_rows(context, builder, zty, z_value, i):
    """(D, pointers to rows i .. i + 3 of Z, a function widening and broadcasting one of their
    elements to <8 x double>, llvm.fma.v8f64)."""
    z_arr = context.make_array(zty)(context, builder, z_value)
    z_elem = context.get_data_type(zty.dtype)
    stride = builder.extract_value(z_arr.strides, 0)
    rows = [_row_pointer(builder, z_arr.data, stride, builder.add(i, ir.Constant(_I64, m)),
                         z_elem.as_pointer())
            for m in range(4)]
    lane0 = ir.Constant(_I32, 0)
    splat = ir.Constant(ir.VectorType(_I32, 8), [0] * 8)

    def broadcast(row, j):
        z = builder.load(builder.gep(row, [j]))
        if zty.dtype == types.float32:
            z = builder.fpext(z, _F64)
        z_vec = builder.insert_element(ir.Constant(_V8, ir.Undefined), z, lane0)
        return builder.shuffle_vector(z_vec, ir.Constant(_V8, ir.Undefined), splat)

    fma = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(_V8, [_V8, _V8, _V8]), "llvm.fma.v8f64")
    return builder.extract_value(z_arr.shape, 1), rows, broadcast, fma


@intrinsic
def eta_4rows_8draws(typingctx, Z, i, Bt, g, a, s0, eta, k, S):
    """eta[k + m S + t] = a[s0 + t] + sum_j Z[i + m, j] Bt[g, j, t] for rows m = 0..3 and draws
    t = 0..7. Z: 2-d, rows contiguous (float32 or float64); Bt: (groups, D, 8) C-contiguous
    float64, the coefficients of draws 8g .. 8g + 7 transposed; a, eta: 1-d contiguous float64."""
    ok = (isinstance(Z, types.Array) and Z.ndim == 2 and Z.layout == "C"
          and Z.dtype in (types.float32, types.float64)
          and isinstance(Bt, types.Array) and Bt.ndim == 3 and Bt.layout == "C"
          and Bt.dtype == types.float64
          and all(isinstance(x, types.Array) and x.ndim == 1 and x.dtype == types.float64
                  for x in (a, eta)))
    if not ok:
        return None
    sig = types.void(Z, types.int64, Bt, types.int64, a, types.int64, eta, types.int64,
                     types.int64)

    def codegen(context, builder, signature, args):
        zty, _, bty, _, aty, _, ety, _, _ = signature.args
        b_arr = context.make_array(bty)(context, builder, args[2])
        a_arr = context.make_array(aty)(context, builder, args[4])
        e_arr = context.make_array(ety)(context, builder, args[6])
        i, g, s0, k, S = args[1], args[3], args[5], args[7], args[8]
        D, rows, broadcast, fma = _four_rows(context, builder, zty, args[0], i)
        b_group = _row_pointer(builder, b_arr.data, builder.extract_value(b_arr.strides, 0), g,
                               _F64.as_pointer())
        a_ptr = builder.bitcast(builder.gep(a_arr.data, [s0]), _V8.as_pointer())
        start = builder.load(a_ptr, align=8)
        accs = [cgutils.alloca_once_value(builder, start) for _ in range(4)]
        with cgutils.for_range(builder, D) as loop:
            j = loop.index
            b_ptr = builder.gep(b_group, [builder.mul(j, ir.Constant(_I64, 8))])
            b_vec = builder.load(builder.bitcast(b_ptr, _V8.as_pointer()), align=8)
            for m in range(4):
                acc = builder.call(fma, [broadcast(rows[m], j), b_vec, builder.load(accs[m])])
                builder.store(acc, accs[m])
        for m in range(4):
            offset = builder.add(k, builder.mul(S, ir.Constant(_I64, m)))
            out = builder.bitcast(builder.gep(e_arr.data, [offset]), _V8.as_pointer())
            builder.store(builder.load(accs[m]), out, align=8)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def grad_4rows_8draws(typingctx, Z, i, q, k, S, Gt, g):
    """Gt[g, j, t] += sum_m q[k + m S + t] Z[i + m, j] for rows m = 0..3, draws t = 0..7 and
    every column j: the gradient sums of a group of eight draws, kept transposed (D x 8) so that
    the eight draws fill one vector; each load and store of it serves four rows. Z as in
    ``eta_4rows_8draws``; q: 1-d contiguous float64; Gt: (groups, D, 8) C-contiguous float64."""
    ok = (isinstance(Z, types.Array) and Z.ndim == 2 and Z.layout == "C"
          and Z.dtype in (types.float32, types.float64)
          and isinstance(q, types.Array) and q.ndim == 1 and q.dtype == types.float64
          and isinstance(Gt, types.Array) and Gt.ndim == 3 and Gt.layout == "C"
          and Gt.dtype == types.float64)
    if not ok:
        return None
    sig = types.void(Z, types.int64, q, types.int64, types.int64, Gt, types.int64)

    def codegen(context, builder, signature, args):
        zty, _, qty, _, _, gty, _ = signature.args
        q_arr = context.make_array(qty)(context, builder, args[2])
        g_arr = context.make_array(gty)(context, builder, args[5])
        i, k, S, g = args[1], args[3], args[4], args[6]
        D, rows, broadcast, fma = _four_rows(context, builder, zty, args[0], i)
        q_vecs = []
        for m in range(4):
            offset = builder.add(k, builder.mul(S, ir.Constant(_I64, m)))
            q_ptr = builder.bitcast(builder.gep(q_arr.data, [offset]), _V8.as_pointer())
            q_vecs.append(builder.load(q_ptr, align=8))
        g_group = _row_pointer(builder, g_arr.data, builder.extract_value(g_arr.strides, 0), g,
                               _F64.as_pointer())
        with cgutils.for_range(builder, D) as loop:
            j = loop.index
            g_ptr = builder.bitcast(builder.gep(g_group, [builder.mul(j, ir.Constant(_I64, 8))]),
                                    _V8.as_pointer())
            acc = builder.load(g_ptr, align=8)
            for m in range(4):
                acc = builder.call(fma, [broadcast(rows[m], j), q_vecs[m], acc])
            builder.store(acc, g_ptr, align=8)
        return context.get_dummy_value()

    return sig, codegen
