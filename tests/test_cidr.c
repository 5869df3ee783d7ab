/* test_cidr.c — address ranges for --proxy-from (shard/cidr.h): parsing, refusals with a
 * message, matching IPv4, IPv6 and IPv4-mapped IPv6 peers at the prefix's edges. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "shard/cidr.h"

static struct sockaddr_storage addr(const char *text)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    if (strchr(text, ':')) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)(void *)&ss;
        s6->sin6_family = AF_INET6;
        assert_int_equal(inet_pton(AF_INET6, text, &s6->sin6_addr), 1);
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)(void *)&ss;
        s4->sin_family = AF_INET;
        assert_int_equal(inet_pton(AF_INET, text, &s4->sin_addr), 1);
    }
    return ss;
}

static bool in(const struct cidr_list *l, const char *text)
{
    struct sockaddr_storage ss = addr(text);
    return cidr_match(l, (const struct sockaddr *)&ss);
}

static void test_match(void **state)
{
    (void)state;
    struct cidr_list l;
    char err[128];
    assert_int_equal(
        cidr_parse("10.0.0.0/8,192.0.2.7,2001:db8::/32,172.16.0.0/12", &l, err, sizeof err), 0);
    assert_int_equal(l.len, 4);
    assert_true(in(&l, "10.0.0.0"));
    assert_true(in(&l, "10.255.255.255"));
    assert_false(in(&l, "11.0.0.0"));
    assert_false(in(&l, "9.255.255.255"));
    assert_true(in(&l, "192.0.2.7"));
    assert_false(in(&l, "192.0.2.8"));
    assert_true(in(&l, "172.31.255.255"));
    assert_false(in(&l, "172.32.0.0"));
    assert_true(in(&l, "2001:db8:ffff::1"));
    assert_false(in(&l, "2001:db9::1"));
    assert_true(in(&l, "::ffff:10.1.2.3")); /* a dual-stack socket's IPv4 peer */
    assert_false(in(&l, "::ffff:11.1.2.3"));
    assert_false(in(&l, "::1"));
    struct sockaddr_storage unix_peer = {.ss_family = AF_UNIX};
    assert_false(cidr_match(&l, (const struct sockaddr *)&unix_peer));

    assert_int_equal(cidr_parse("0.0.0.0/0", &l, err, sizeof err), 0);
    assert_true(in(&l, "203.0.113.9"));
    assert_false(in(&l, "2001:db8::1")); /* an IPv4 range says nothing of IPv6 peers */
    assert_int_equal(cidr_parse("::/0", &l, err, sizeof err), 0);
    assert_true(in(&l, "2001:db8::1"));
    assert_int_equal(cidr_parse("127.0.0.1/32,::1/128", &l, err, sizeof err), 0);
    assert_true(in(&l, "127.0.0.1"));
    assert_true(in(&l, "::1"));
    assert_false(in(&l, "127.0.0.2"));
    assert_int_equal(cidr_parse("10.0.0.128/25", &l, err, sizeof err), 0);
    assert_true(in(&l, "10.0.0.255"));
    assert_false(in(&l, "10.0.0.127"));
}

static void test_refusals(void **state)
{
    (void)state;
    static const struct {
        const char *text, *says;
    } cases[] = {
        {"", "not an address"},
        {"10.0.0.0/8,", "not an address"},
        {",10.0.0.0/8", "not an address"},
        {"10.0.0/8", "not an IPv4 or IPv6 address"},
        {"10.0.0.0/33", "the prefix must be 0..32"},
        {"2001:db8::/129", "the prefix must be 0..128"},
        {"10.0.0.0/", "the prefix must be"},
        {"10.0.0.0/08", "the prefix must be"},
        {"10.0.0.0/-1", "the prefix must be"},
        {"10.0.0.0/8x", "the prefix must be"},
        {"10.1.0.0/8", "bits set past the prefix"},
        {"2001:db8::1/32", "bits set past the prefix"},
        {"localhost", "not an IPv4 or IPv6 address"},
        {"10.0.0.0 /8", "not an IPv4 or IPv6 address"},
    };
    struct cidr_list l;
    char err[128];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        err[0] = '\0';
        if (cidr_parse(cases[i].text, &l, err, sizeof err) != -1 || !strstr(err, cases[i].says))
            fail_msg("'%s': said '%s', want '%s'", cases[i].text, err, cases[i].says);
    }
    char many[CIDR_RANGES_MAX * 16 + 16] = "";
    for (int i = 0; i <= CIDR_RANGES_MAX; i++)
        snprintf(many + strlen(many), sizeof many - strlen(many), "%s10.0.%d.0/24", i ? "," : "",
                 i);
    assert_int_equal(cidr_parse(many, &l, err, sizeof err), -1);
    assert_non_null(strstr(err, "more than 32 ranges"));
    *strrchr(many, ',') = '\0'; /* exactly the most */
    assert_int_equal(cidr_parse(many, &l, err, sizeof err), 0);
    assert_int_equal(l.len, CIDR_RANGES_MAX);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_match),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
