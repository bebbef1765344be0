# LemonLDAP::NG's portal as one PSGI app with the static files its pages load (the same aliases
# as Debian's /etc/lemonldap-ng/portal-nginx.conf), for plackup: no web server needed.
use strict;
use Plack::Builder;
use Plack::App::File;
use Lemonldap::NG::Portal::Main;

my $portal = Lemonldap::NG::Portal::Main->run( {} );
builder {
    mount '/static'     => Plack::App::File->new( root => '/usr/share/lemonldap-ng/portal/htdocs/static' )->to_app;
    mount '/javascript' => Plack::App::File->new( root => '/usr/share/javascript' )->to_app;
    mount '/'           => $portal;
};
