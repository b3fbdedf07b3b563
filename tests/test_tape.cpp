#include <boost/test/unit_test.hpp>

#include <cmath>
#include <thread>
#include <vector>

#include <rewind/autograd.hpp>

using namespace rw;
using Array = xt::xarray<double>;

BOOST_AUTO_TEST_SUITE(tape)

BOOST_AUTO_TEST_CASE(backward_of_a_product_and_tanh_gives_known_gradients) {
    Tensor<double> x(Array{0.5, -1.0}, true);
    Tensor<double> w(Array{2.0, 3.0}, true);
    Tensor<double> loss = sum(tanh(mul(x, w)));
    loss.backward();
    for (std::size_t i = 0; i < 2; ++i) {
        const double z = x.value()(i) * w.value()(i);
        const double d = 1 - std::tanh(z) * std::tanh(z);
        BOOST_TEST(x.grad().value()(i) == d * w.value()(i), boost::test_tools::tolerance(1e-14));
        BOOST_TEST(w.grad().value()(i) == d * x.value()(i), boost::test_tools::tolerance(1e-14));
    }
}

// The engine skips its sort when the nodes come out of the graph walk in tape order; here they
// do not (the walk reaches tanh, recorded first, before exp), so the sort must still happen.
BOOST_AUTO_TEST_CASE(gradients_are_right_when_the_graph_walk_is_out_of_tape_order) {
    Tensor<double> x(Array{0.3, -0.7}, true);
    Tensor<double> p = tanh(x);
    Tensor<double> q = exp(x);
    sum(mul(q, p)).backward();
    for (std::size_t i = 0; i < 2; ++i) {
        const double v = x.value()(i), t = std::tanh(v), e = std::exp(v);
        BOOST_TEST(x.grad().value()(i) == (1 - t * t) * e + t * e, boost::test_tools::tolerance(1e-14));
    }
}

// Small values' storage is recycled when their tensor dies: live tensors must never share it.
BOOST_AUTO_TEST_CASE(recycled_storage_never_aliases_a_live_tensor) {
    Tensor<double> x(Array{0.1, 0.2, 0.3, 0.4}, true);
    std::vector<Tensor<double>> kept;
    for (int i = 0; i < 50; ++i) {
        Tensor<double> dropped = add(mul(x, x), x);  // temporaries die here and in the next line
        kept.push_back(tanh(mul_scalar(x, double(i))));
    }
    for (int i = 0; i < 50; ++i) {
        for (std::size_t j = 0; j < 4; ++j)
            BOOST_TEST(kept[i].value()(j) == std::tanh(i * x.value()(j)), boost::test_tools::tolerance(1e-15));
        for (int k = 0; k < i; ++k) BOOST_TEST((kept[i].value().data() != kept[k].value().data()));
    }
    sum(kept.back()).backward();
    BOOST_TEST(x.grad().defined());
}

// Tensors and nodes come from per-thread free lists; one built on a thread and freed on another
// must work (and leave both threads' lists usable).
BOOST_AUTO_TEST_CASE(graphs_built_on_one_thread_run_and_die_on_another) {
    Tensor<double> x(Array{0.5, -0.5}, true);
    Tensor<double> loss = sum(tanh(mul(x, x)));
    std::thread([&] {
        loss.backward();
        loss = Tensor<double>();  // the graph dies on this thread
        Tensor<double> y = tanh(x);  // and this thread records on its own lists
        sum(y).backward();
    }).join();
    for (std::size_t i = 0; i < 2; ++i) {
        const double v = x.value()(i), t = std::tanh(v * v), u = std::tanh(v);
        BOOST_TEST(x.grad().value()(i) == (1 - t * t) * 2 * v + (1 - u * u), boost::test_tools::tolerance(1e-14));
    }
}

// Ops under NoGradGuard record nothing, also for inputs given as a braced list.
BOOST_AUTO_TEST_CASE(no_grad_ops_record_nothing) {
    Tensor<double> x(Array{1.0, 2.0}, true);
    NoGradGuard guard;
    Tensor<double> y = tanh(add(x, x));
    BOOST_TEST(!y.requires_grad());
    BOOST_TEST(!y.grad_fn());
}

BOOST_AUTO_TEST_SUITE_END()
