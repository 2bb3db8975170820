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

``bernoulli_rows_8draws`` (and its Gaussian and log-likelihood-only versions) applies the
likelihood's elementwise step to a block's linear predictors for eight draws in the lanes, and
keeps each draw's sums over the block in registers; its exp and log1p are written here as vector
arithmetic (``vector_exp_nonpositive``, ``vector_log1p_and_reciprocal``), within a few ulp of libm
(tested through the kernel over [-40, 40]).

The rows may be float32 or float64 (float32 values are widened; all arithmetic is float64). The
sum over j runs in order for each (row, draw), as a fused multiply-add chain starting at the
intercept, so results do not depend on the thread count.
"""

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from vireg.kernels.elementary import EXP_FLOOR

_F64 = ir.DoubleType()
_V8 = ir.VectorType(_F64, 8)
_I64 = ir.IntType(64)
_I32 = ir.IntType(32)
_BYTE_PTR = ir.IntType(8).as_pointer()


def _row_pointer(builder, data, stride, row, elem_ptr):
    """Pointer to the first element of ``row`` of an array with row ``stride`` in bytes."""
    base = builder.bitcast(data, _BYTE_PTR)
    return builder.bitcast(builder.gep(base, [builder.mul(row, stride)]), elem_ptr)


def _splat(builder, value, vty):
    """value in every lane of a vector of type vty."""
    first = builder.insert_element(ir.Constant(vty, ir.Undefined), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(first, ir.Constant(vty, ir.Undefined),
                                  ir.Constant(ir.VectorType(_I32, 8), [0] * 8))


def _const(value):
    return ir.Constant(_V8, [value] * 8)


def _vector_fn(builder, name, n_args):
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V8, [_V8] * n_args),
                                          name)


def _four_rows(context, builder, zty, z_value, i):
    """(D, pointers to rows i .. i + 3 of Z, a function widening and broadcasting one of their
    elements to <8 x double>, llvm.fma.v8f64)."""
    z_arr = context.make_array(zty)(context, builder, z_value)
    z_elem = context.get_data_type(zty.dtype)
    stride = builder.extract_value(z_arr.strides, 0)
    rows = [_row_pointer(builder, z_arr.data, stride, builder.add(i, ir.Constant(_I64, m)),
                         z_elem.as_pointer())
            for m in range(4)]

    def broadcast(row, j):
        z = builder.load(builder.gep(row, [j]))
        if zty.dtype == types.float32:
            z = builder.fpext(z, _F64)
        return _splat(builder, z, _V8)

    fma = _vector_fn(builder, "llvm.fma.v8f64", 3)
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


# The likelihoods' elementwise work for whole groups of eight draws, the draws in the lanes.

_LOG2E = 1.4426950408889634
_LN2_HI = 0.6931471805599453  # ln 2 rounded to double, and the rest (Cody and Waite)
_LN2_LO = 2.3190468138462996e-17
_SQRT2_M1 = 0.41421356237309503


def _horner(builder, x, coefficients):
    """sum_k coefficients[k] x^k (highest power last in the list), by Horner's rule in fma."""
    fma = _vector_fn(builder, "llvm.fma.v8f64", 3)
    p = _const(coefficients[-1])
    for c in reversed(coefficients[:-1]):
        p = builder.call(fma, [p, x, _const(c)])
    return p


def vector_exp_nonpositive(builder, x):
    """exp(x) in each lane for x <= 0: x = n ln 2 + r with |r| <= ln 2 / 2, exp(r) by its
    degree-12 Taylor polynomial (truncation below 2e-16 relative), times 2^n written into the
    exponent bits. Lanes below EXP_FLOOR (and NaN) give exp(EXP_FLOOR), whose effect on 1 + e is
    below double precision."""
    floor = _const(EXP_FLOOR)
    x = builder.select(builder.fcmp_ordered(">", x, floor), x, floor)
    n = builder.call(_vector_fn(builder, "llvm.rint.v8f64", 1), [builder.fmul(x, _const(_LOG2E))])
    fma = _vector_fn(builder, "llvm.fma.v8f64", 3)
    r = builder.call(fma, [n, _const(-_LN2_HI), x])
    r = builder.call(fma, [n, _const(-_LN2_LO), r])
    factorials = [1.0]
    for k in range(1, 13):
        factorials.append(factorials[-1] * k)
    p = _horner(builder, r, [1.0 / f for f in factorials])
    i64x8 = ir.VectorType(_I64, 8)
    bits = builder.shl(builder.add(builder.fptosi(n, i64x8), ir.Constant(i64x8, [1023] * 8)),
                       ir.Constant(i64x8, [52] * 8))
    return builder.fmul(p, builder.bitcast(bits, _V8))


def vector_log1p_and_reciprocal(builder, e):
    """(log(1 + e), 1 / (1 + e)) in each lane for 0 <= e <= 1.

    log(1 + e) = k + 2 atanh(t), t = f / (2 + f), with f = e and k = 0 for e <= sqrt 2 - 1, else
    f = (e - 1) / 2 and k = ln 2 (so |t| <= 0.172), and 2 atanh(t) = 2 t sum_i t^(2i) / (2i + 1)
    to i = 9 (truncation below 3e-17 relative). Both quotients come from one division,
    R = 1 / ((1 + e)(2 + f)): t = f (1 + e) R and 1 / (1 + e) = (2 + f) R."""
    one, two = _const(1.0), _const(2.0)
    high = builder.fcmp_ordered(">", e, _const(_SQRT2_M1))
    f = builder.select(high, builder.fmul(builder.fsub(e, one), _const(0.5)), e)
    k = builder.select(high, _const(_LN2_HI), _const(0.0))
    u = builder.fadd(one, e)
    v = builder.fadd(two, f)
    R = builder.fdiv(one, builder.fmul(u, v))
    t = builder.fmul(builder.fmul(f, u), R)
    p = _horner(builder, builder.fmul(t, t), [1.0 / (2 * i + 1) for i in range(10)])
    fma = _vector_fn(builder, "llvm.fma.v8f64", 3)
    return builder.call(fma, [builder.fmul(two, t), p, k]), builder.fmul(v, R)


def _terms_arrays_ok(q, y, sums):
    return (isinstance(q, types.Array) and q.ndim == 1 and q.layout == "C"
            and q.dtype == types.float64
            and isinstance(y, types.Array) and y.ndim == 1
            and y.dtype in (types.float32, types.float64)
            and isinstance(sums, types.Array) and sums.ndim == 2 and sums.layout == "C"
            and sums.dtype == types.float64)


def _rows_of_eight_draws(kind):
    """An intrinsic applying the likelihood's elementwise step to rows r < nb of a block for the
    draws s = s0 .. s0 + 7 (lanes), in place: with (out, a, b) = TERMS[kind](eta_rs, y_(b0+r)),

        q[r S + s] = out (eta in, the residual out; unchanged without the gradient)
        sums[0, s] += sum_r a,   sums[1, s] += sum_r b

    the sums over the block's rows taken in order in each lane, then added once."""
    @intrinsic
    def rows_of_eight_draws(typingctx, q, y, b0, nb, S, s0, sums):
        if not _terms_arrays_ok(q, y, sums):
            return None
        sig = types.void(q, y, types.int64, types.int64, types.int64, types.int64, sums)

        def codegen(context, builder, signature, args):
            qty, yty, _, _, _, _, sty = signature.args
            q_arr = context.make_array(qty)(context, builder, args[0])
            y_arr = context.make_array(yty)(context, builder, args[1])
            s_arr = context.make_array(sty)(context, builder, args[6])
            b0, nb, S, s0 = args[2], args[3], args[4], args[5]
            first = cgutils.alloca_once_value(builder, ir.Constant(_V8, None))
            second = cgutils.alloca_once_value(builder, ir.Constant(_V8, None))
            with cgutils.for_range(builder, nb) as loop:
                r = loop.index
                ptr = builder.bitcast(builder.gep(q_arr.data, [builder.add(builder.mul(r, S), s0)]),
                                      _V8.as_pointer())
                eta = builder.load(ptr, align=8)
                y_r = builder.load(builder.gep(y_arr.data, [builder.add(b0, r)]))
                if yty.dtype == types.float32:
                    y_r = builder.fpext(y_r, _F64)
                out, a, b = TERMS[kind](builder, eta, _splat(builder, y_r, _V8))
                if out is not None:
                    builder.store(out, ptr, align=8)
                builder.store(builder.fadd(builder.load(first), a), first)
                builder.store(builder.fadd(builder.load(second), b), second)
            stride = builder.extract_value(s_arr.strides, 0)
            for row, acc in ((0, first), (1, second)):
                base = _row_pointer(builder, s_arr.data, stride, ir.Constant(_I64, row),
                                    _F64.as_pointer())
                ptr = builder.bitcast(builder.gep(base, [s0]), _V8.as_pointer())
                builder.store(builder.fadd(builder.load(ptr, align=8), builder.load(acc)), ptr,
                              align=8)
            return context.get_dummy_value()

        return sig, codegen

    return rows_of_eight_draws


def _bernoulli_terms(builder, eta, y, with_grad):
    """(y - sigmoid(eta), y - sigmoid(eta), y eta - softplus(eta)) with e = exp(-|eta|) <= 1:
    softplus(eta) = max(eta, 0) + log1p(e), sigmoid(eta) = 1 / (1 + e) if eta >= 0 else
    e / (1 + e). Without the gradient, (None, 0, the log-likelihood term)."""
    fabs = _vector_fn(builder, "llvm.fabs.v8f64", 1)
    zero = _const(0.0)
    e = vector_exp_nonpositive(builder, builder.fsub(zero, builder.call(fabs, [eta])))
    log1p_e, inv = vector_log1p_and_reciprocal(builder, e)
    positive = builder.fcmp_ordered(">=", eta, zero)
    softplus = builder.fadd(builder.select(positive, eta, zero), log1p_e)
    # One explicit fma, so that the passes with and without the gradient round ll alike.
    ll = builder.call(_vector_fn(builder, "llvm.fma.v8f64", 3), [y, eta, builder.fneg(softplus)])
    if not with_grad:
        return None, zero, ll
    residual = builder.fsub(y, builder.select(positive, inv, builder.fmul(e, inv)))
    return residual, residual, ll


def _gaussian_terms(builder, eta, y):
    """(e, e, e^2) for the residual e = y - eta."""
    e = builder.fsub(y, eta)
    return e, e, builder.fmul(e, e)


TERMS = {
    "bernoulli": lambda builder, eta, y: _bernoulli_terms(builder, eta, y, True),
    "bernoulli_ll": lambda builder, eta, y: _bernoulli_terms(builder, eta, y, False),
    "gaussian": _gaussian_terms,
}
bernoulli_rows_8draws = _rows_of_eight_draws("bernoulli")
bernoulli_ll_rows_8draws = _rows_of_eight_draws("bernoulli_ll")
gaussian_rows_8draws = _rows_of_eight_draws("gaussian")
